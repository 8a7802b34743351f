"""Atomic artifact writing and provenance.

Every artifact noisylm writes goes to a temporary name first and is renamed into place, so an
interrupted command never leaves a half-written file or directory. Every artifact carries
`provenance()`: the noisylm / Python / library versions, the command line and a timestamp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from noisylm import __version__
from noisylm.errors import NoisyLMError, UsageError


def provenance(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Who made an artifact: config, seed, versions, command line, time (UTC, ISO 8601)."""
    versions = {"noisylm": __version__, "python": platform.python_version()}
    for name in ("numpy", "torch", "tiktoken"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    record: dict[str, Any] = {
        "versions": versions,
        "argv": list(sys.argv),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
    }
    if config is not None:
        record["config"] = config
    if seed is not None:
        record["seed"] = seed
    return record


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    >>> with atomic_path("out.bin") as tmp:
    ...     np.save(tmp, array)   # anything that writes a file at `tmp`
    """
    path = Path(path)
    tmp = _tmp_name(path)
    with _removed_on_failure(tmp, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Remove the temporary ``tmp`` if the block fails; an OSError becomes one line naming ``path``."""
    try:
        yield
    except OSError as exc:
        _remove(tmp)
        raise NoisyLMError(
            f"cannot write {path}: {exc.strerror or exc}; check the path and free space"
        ) from exc
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0):  # numpy / torch arrays
        return obj.tolist()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; the one rule every command follows."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise NoisyLMError(f"output {path} already exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name, then swap it into place.

    Nothing exists at ``path`` until the block has finished without error; an existing ``path``
    is refused unless ``overwrite`` and is only removed once the new one is complete.

    The build folder ``.NAME.tmp-HOST-PID-XXXXXXXX`` names its owner, so a run killed outright
    (SIGKILL, power loss), which cannot clean up after itself, is cleaned up by the next run for the
    same ``path``: see `remove_stale_builds`.
    """
    path = Path(path)
    remove_stale_builds(path)
    path = check_output_dir(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_build_prefix(path, "tmp"), dir=path.parent))
        # mkdtemp makes the folder private (0700); an artifact directory gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
    except OSError as exc:
        raise NoisyLMError(f"cannot create {path}: {exc.strerror or exc}; check the path") from exc
    with _removed_on_failure(tmp, path):
        yield tmp
        if path.exists():
            old = path.with_name(_build_prefix(path, "old") + os.urandom(4).hex())
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)


# The owner of a build folder is in its name, written atomically by mkdtemp, so there is no moment in
# which a folder exists without it, and nothing extra ends up inside the finished artifact.
def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def _build_prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-{_host_tag()}-{os.getpid()}-"


def _build_pattern(path: Path) -> re.Pattern[str]:
    # host tags hold no "-", so the name splits unambiguously; the suffix is 8 random characters
    return re.compile(rf"\.{re.escape(path.name)}\.(?P<kind>tmp|old)-(?P<host>\w+)-(?P<pid>\d+)-\w{{8}}")


def remove_stale_builds(path: str | os.PathLike) -> list[Path]:
    """Remove the build folders of ``path`` that were left by killed runs, and say so in one line.

    A build folder is stale when it was made on this host by a process that no longer runs (or is a
    zombie). Folders of live processes and of other hosts (shared file systems) are left alone, and
    so is a leftover previous version (``.NAME.old-...``) while ``path`` itself is missing. A reused
    pid only makes a stale folder look alive, so the worst case is a folder kept, never one removed
    under a running command. Returns the folders removed.
    """
    path = Path(path)
    pattern, host = _build_pattern(path), _host_tag()
    try:
        candidates = list(path.parent.iterdir())
    except OSError:  # no parent yet, or unreadable: nothing of ours can be there
        return []
    removed = []
    for folder in sorted(candidates):
        match = pattern.fullmatch(folder.name)
        if match is None or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not path.exists():
            continue  # killed between the two renames of a swap: this is the only complete copy
        _remove(folder)
        removed.append(folder)
    if removed:
        names = ", ".join(f.name for f in removed)
        print(
            f"noisylm: removed {len(removed)} stale build folder(s) of {path} left by killed runs: {names}",
            file=sys.stderr,
            flush=True,
        )
    return removed


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; unknown counts as alive (nothing is removed)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it there; never clean up on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    try:  # Linux: a killed process that nobody has reaped yet is a zombie; it writes nothing
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # gone since os.kill, unless there is no /proc
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def pause_for_tests(point: str) -> None:
    """Test hook: with ``NOISYLM_TEST_PAUSE=POINT:FILE`` in the environment, a command that reaches
    ``point`` creates FILE (holding its pid) and sleeps until it is killed, so a test can kill it at
    a known stage instead of racing it. Without the variable this does nothing."""
    wanted, _, marker = os.environ.get("NOISYLM_TEST_PAUSE", "").partition(":")
    if wanted != point or not marker:
        return
    Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # cleanup must never hide the error that caused it
            path.unlink()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Streaming sha256 of a file (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with an error that names the file and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NoisyLMError(f"{what} {path} not found; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NoisyLMError(f"{what} {path} is not valid JSON ({exc}); regenerate it") from None


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first top-level key (sorted) whose value differs between two recorded configs, as
    ``"key: old -> new"``; ``""`` when they are equal. Resume checks use it to say what changed."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
    return ""


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file we append to (metrics, probe progress): every line that parses to
    an object. A torn last line from a killed writer is dropped; a missing file reads as []."""
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


CONFIG_SUFFIXES = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) config file (empty file: {}).

    The one reader of config files (train configs, sweep configs): every problem, a missing file, an
    unknown suffix, a syntax error (with its line and column), is one `UsageError` line that names the
    file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} not found; check the path")
    kind = CONFIG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"config file {path} must end in .toml, .yaml, .yml or .json; rename it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}; check it") from None
    try:
        values = _parse_config_text(text, kind)
    except _ConfigSyntaxError as exc:
        raise UsageError(f"cannot parse config file {path}: {exc}; fix the {kind} syntax there") from None
    if values is None:  # an empty YAML file
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a table of keys, got {type(values).__name__}")
    return values


class _ConfigSyntaxError(Exception):
    """A parser's error as one line: ``line L, column C: problem``."""


def _parse_config_text(text: str, kind: str) -> Any:
    if kind == "TOML":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message ends in "(at line L, column C)"; put the place first, as for YAML/JSON.
            message = str(exc)
            where = re.search(r"\(at (line \d+, column \d+|end of document)\)$", message)
            if where:
                message = f"{where.group(1)}: {message[: where.start()].strip()}"
            raise _ConfigSyntaxError(_one_line(message)) from None
    if kind == "YAML":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = ", ".join(
                p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p
            )
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise _ConfigSyntaxError(_one_line(where + (problem or str(exc)))) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _ConfigSyntaxError(f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _one_line(message: str) -> str:
    return " ".join(message.split())
