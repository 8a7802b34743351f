"""Noise sweeps: the paper's grid of pre-training runs on one clean corpus (Section 3.1).

A sweep is a paired experiment. Every run shares the model, seed, schedule, initial weights and eval
windows, and differs only in the noise injected into its training shards: the clean run (α = 0), then
each noise kind at each α (the paper: uniform or boosted noise at 1%, 5%, 20%; Gaussian at 5%). Each run
also evaluates on extra domains (Fig. 4).

    sweep_dir/
      sweep.json          the resolved sweep config, the grid (one entry per run), provenance
      data/<name>/        shard sets: `clean`, one per noisy run, one per extra domain
      configs/<run>.json  the TrainConfig of each run (what `--print-commands` launches)
      runs/<run>/         one trainer run directory per grid point
      summary.json, summary.md   status and final numbers of every run

Running the same sweep again resumes it: finished runs (``summary.json`` with status "finished" in the
run directory) are skipped, interrupted runs continue from their last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from noisylm.artifacts import (
    atomic_write_json,
    atomic_write_text,
    first_difference,
    provenance,
    read_json,
    read_jsonl,
)
from noisylm.errors import NoisyLMError, UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SWEEP_FORMAT = "noisylm-sweep/1"
PRESETS = ("demo", "paper-124m", "paper-774m")
NOISE_KINDS = ("uniform", "boosted", "gaussian", "mojibake", "histogram", "corpus")
RESERVED_EVAL_NAMES = ("val", "noise", "train")
LAUNCHERS = ("inprocess", "torchrun")


@dataclass
class NoiseSpec:
    """One noise kind and the proportions α at which it is injected (one run per α)."""

    kind: str
    alphas: list[float]
    params: dict[str, Any] = field(default_factory=dict)  # passed to `inject` (e.g. sd for gaussian)

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise UsageError(f"unknown noise kind {self.kind!r}; choose one of: {', '.join(NOISE_KINDS)}")
        if isinstance(self.alphas, (int, float)):
            self.alphas = [self.alphas]
        self.alphas = [float(a) for a in self.alphas]
        if not self.alphas:
            raise UsageError(f"noise kind {self.kind!r} has no alphas; give e.g. alphas = [0.05]")
        for alpha in self.alphas:
            if not 0.0 < alpha < 1.0:
                raise UsageError(f"noise alpha {alpha} for {self.kind!r} is outside (0, 1); use e.g. 0.05")
        if len(set(self.alphas)) != len(self.alphas):
            raise UsageError(f"noise kind {self.kind!r} lists an alpha twice: {self.alphas}")


@dataclass
class SweepConfig:
    """A sweep: one clean corpus, a grid of noisy variants, one shared training recipe."""

    name: str = "sweep"
    # The clean training corpus: a bundled corpus name (`shakespeare`, `python-docs`), prepared into
    # data/clean with `tokenizer`, or the path of a shard set made with `noisylm prepare`.
    data: str | None = None
    tokenizer: str = "gpt2"  # for bundled corpora; a prepared shard set keeps its own
    # Extra eval domains (Fig. 4): eval-set name -> bundled corpus name or prepared shard set.
    domains: dict[str, str] = field(default_factory=dict)
    clean: bool = True  # include the α = 0 baseline (the report compares every run against it)
    noise: list[NoiseSpec] = field(default_factory=list)
    placement: str = "append"  # the paper appends the noise after the clean data; or "interleave"
    noise_seed: int = 0  # seed of the noise generator, the same for every noisy variant
    seed: int = 1337  # training seed, the same for every run (paired sampling)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every run
    launcher: str = "inprocess"  # "torchrun" launches each run as `torchrun ... noisylm train`
    nproc_per_node: int = 1  # processes per run under torchrun (GPUs per node)
    # Runs trained at once, each in its own `noisylm train` process on one thread (launcher "inprocess"
    # only): on a small CPU, two single-threaded runs use two cores better than one two-threaded run.
    parallel: int = 1

    def __post_init__(self) -> None:
        self.noise = [n if isinstance(n, NoiseSpec) else _make(NoiseSpec, n, "noise") for n in self.noise]
        if not self.name or "/" in self.name:
            raise UsageError(f"sweep name {self.name!r} must be a non-empty name without '/'")
        if self.placement not in ("append", "interleave"):
            raise UsageError(f"placement {self.placement!r} is not valid; use 'append' or 'interleave'")
        if self.launcher not in LAUNCHERS:
            raise UsageError(f"launcher {self.launcher!r} is not valid; use one of: {', '.join(LAUNCHERS)}")
        if self.nproc_per_node < 1:
            raise UsageError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.parallel < 1:
            raise UsageError(f"parallel must be >= 1, got {self.parallel}")
        if self.parallel > 1 and self.launcher != "inprocess":
            raise UsageError(
                "parallel > 1 needs launcher = 'inprocess'; a scheduler parallelises torchrun jobs"
            )
        if not self.clean and not self.noise:
            raise UsageError("the sweep has no runs; set clean = true or add a [[noise]] entry")
        for name in self.domains:
            if name in RESERVED_EVAL_NAMES or not name or "/" in name:
                raise UsageError(
                    f"domain name {name!r} is reserved or invalid; pick another (not val/noise/train)"
                )
        if not isinstance(self.train, dict):
            raise UsageError("[train] must be a table of TrainConfig fields")
        names = [r.name for r in self.grid()]
        clash = set(names) & set(self.domains)
        if clash:
            raise UsageError(f"domain name(s) {sorted(clash)} clash with run names; rename the domain")

    def grid(self) -> list[RunSpec]:
        """The runs of the sweep, clean first, then each noise kind in the order given."""
        runs = [RunSpec("clean", None, 0.0, {})] if self.clean else []
        for spec in self.noise:
            for alpha in spec.alphas:
                runs.append(RunSpec(run_name(spec.kind, alpha), spec.kind, alpha, dict(spec.params)))
        seen: set[str] = set()
        for run in runs:
            if run.name in seen:
                raise UsageError(f"run {run.name!r} appears twice in the grid; list each (kind, alpha) once")
            seen.add(run.name)
        return runs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One grid point: its name (= run and data directory name), noise kind and α."""

    name: str
    kind: str | None  # None for the clean run
    alpha: float
    params: dict[str, Any]


def run_name(kind: str, alpha: float) -> str:
    """`uniform-a0.05`: the directory name of the run with ``kind`` noise at proportion ``alpha``."""
    return f"{kind}-a{alpha:g}"


def _make(cls: type, values: Any, what: str) -> Any:
    if not isinstance(values, dict):
        raise UsageError(f"{what} must be a table, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown {what} key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise UsageError(f"bad {what} value: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Loading configs: presets shipped in the package, TOML/YAML/JSON files, `key=value` overrides


def load_sweep_config(source: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    """A preset name (`demo`, `paper-124m`, `paper-774m`) or a TOML/YAML/JSON file, plus overrides.

    Overrides are ``key=value`` with dotted keys into tables (``train.max_iters=100``,
    ``domains.arxiv=/data/arxiv``); values are parsed as TOML values when they can be (numbers,
    booleans, ``[0.01, 0.05]``) and taken as strings otherwise.
    """
    values = _read_config(source)
    for item in overrides or []:
        _apply_override(values, item)
    return _make(SweepConfig, values, "sweep config")


def _read_config(source: str | os.PathLike) -> dict[str, Any]:
    text_source = str(source)
    if text_source in PRESETS:
        text = resources.files("noisylm.configs").joinpath(f"{text_source}.toml").read_text("utf-8")
        return tomllib.loads(text)
    path = Path(source)
    if not path.is_file():
        raise UsageError(
            f"sweep config {path} not found; give a preset ({', '.join(PRESETS)}) or a .toml/.yaml file"
        )
    text = path.read_text("utf-8")
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise UsageError(f"sweep config {path} must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise UsageError(f"sweep config {path} does not parse ({exc}); fix the syntax") from None
    except ImportError:
        raise UsageError("reading YAML needs pyyaml; pip install pyyaml or use TOML") from None
    if not isinstance(values, dict):
        raise UsageError(f"sweep config {path} must hold a table of settings")
    return values


def _apply_override(values: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UsageError(f"override {item!r} is not key=value; e.g. --set train.max_iters=100")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.split(".")
    target = values
    for part in parts[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"override {item!r}: {part!r} is not a table")
        target = node
    target[parts[-1]] = value


# --------------------------------------------------------------------------------------------------
# Run status


def run_status(run_dir: Path) -> str:
    """ "finished" | "failed" | "interrupted" (has a checkpoint to resume from) | "pending"."""
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            status = read_json(summary_path, "run summary").get("status")
        except NoisyLMError:
            status = None
        if status in ("finished", "failed"):
            return status
    if _has_checkpoint(run_dir):
        return "interrupted"
    return "pending"


def _has_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.startswith("ckpt-") for p in ckpts.iterdir())


# --------------------------------------------------------------------------------------------------
# The sweep


def sweep(
    config: SweepConfig | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    print_commands: bool = False,
    only: list[str] | None = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run (or resume) every run of the sweep in ``out_dir``; return the sweep summary.

    ``config`` is a `SweepConfig`, a preset name or a config file (then ``overrides`` apply).
    ``print_commands``: prepare the data and each run's TrainConfig, run nothing, and return the summary
    with ``"commands"``, one shell command per unfinished run, for a cluster scheduler.
    ``only``: train just these runs (the others keep their status). ``retry_failed``: train runs whose
    last attempt failed again (from their last checkpoint when they have one).
    """
    if not isinstance(config, SweepConfig):
        config = load_sweep_config(config, overrides)
    elif overrides:
        raise UsageError("overrides apply to a preset or config file, not to a SweepConfig object")
    out = Path(out_dir)
    grid = config.grid()
    if only:
        unknown = sorted(set(only) - {r.name for r in grid})
        if unknown:
            raise UsageError(f"unknown run(s) {unknown}; the grid has: {', '.join(r.name for r in grid)}")
    _claim_sweep_dir(out, config, overwrite)

    data = _prepare_data(config, out, grid)
    plan = [_plan_run(config, out, run, data) for run in grid]
    atomic_write_json(
        out / "sweep.json",
        {
            "format": SWEEP_FORMAT,
            "name": config.name,
            "config": config.to_dict(),
            "clean_run": "clean" if config.clean else None,
            "domains": {name: _rel(path, out) for name, path in data["domains"].items()},
            "runs": [p["entry"] for p in plan],
            "provenance": provenance(config.to_dict(), config.seed),
        },
    )
    for p in plan:
        atomic_write_json(out / p["entry"]["train_config"], p["train"])

    if print_commands:
        commands = [
            p["command"]
            for p in plan
            if run_status(out / p["entry"]["run_dir"]) != "finished"
            and (not only or p["entry"]["name"] in only)
        ]
        summary = write_summary(out)
        summary["commands"] = commands
        atomic_write_text(out / "commands.sh", "\n".join(["#!/bin/sh", "set -e", *commands]) + "\n")
        return summary

    todo = [p for p in plan if not only or p["entry"]["name"] in only]
    jobs = []
    for index, p in enumerate(todo, 1):
        status = run_status(out / p["entry"]["run_dir"])
        if status == "finished" or (status == "failed" and not retry_failed):
            print(f"[{index}/{len(todo)}] {p['entry']['name']}: {status}, skipped", file=sys.stderr)
        else:
            jobs.append((f"[{index}/{len(todo)}] {p['entry']['name']}", p, status))
    if config.parallel > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=config.parallel) as pool:
            list(pool.map(lambda job: _run_job(config, out, *job, in_process=False), jobs))
    else:
        for job in jobs:
            _run_job(config, out, *job, in_process=True)
    return write_summary(out)


def _run_job(
    config: SweepConfig, out: Path, label: str, plan: dict[str, Any], status: str, in_process: bool
) -> None:
    run_dir = out / plan["entry"]["run_dir"]
    verb = "resuming" if status == "interrupted" else "training"
    print(f"{label}: {verb} in {run_dir}", file=sys.stderr, flush=True)
    try:
        if in_process:
            _train_one(config, plan, run_dir, resume=_has_checkpoint(run_dir))
        else:
            _train_subprocess(plan, run_dir, resume=_has_checkpoint(run_dir))
        print(f"{label}: {run_status(run_dir)}", file=sys.stderr, flush=True)
    except NoisyLMError as exc:
        _record_failure(run_dir, str(exc))
        print(f"{label}: failed: {exc}", file=sys.stderr, flush=True)
    except _Stopped as exc:
        print(f"{label}: {exc}", file=sys.stderr, flush=True)
    finally:
        with _SUMMARY_LOCK:  # parallel runs finish in worker threads; one summary writer at a time
            write_summary(out)


def _claim_sweep_dir(out: Path, config: SweepConfig, overwrite: bool) -> None:
    """Refuse a directory that holds something else or a sweep with different settings."""
    sweep_json = out / "sweep.json"
    if sweep_json.is_file():
        previous = read_json(sweep_json, "sweep config").get("config", {})
        differs = _config_difference(previous, config.to_dict())
        if differs and not overwrite:
            raise NoisyLMError(
                f"{out} holds a sweep made with different settings ({differs}); "
                "use another output directory, or pass --overwrite to start it again"
            )
        if differs:
            _remove_tree(out)
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise NoisyLMError(
                f"output {out} exists and is not a sweep directory; choose another or pass --overwrite"
            )
        _remove_tree(out)
    out.mkdir(parents=True, exist_ok=True)


def _config_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first setting that changes results between two sweep configs ('' when none)."""
    return first_difference(_results_only(old), _results_only(new))


# Settings that change how runs are launched or logged, not their numbers: a sweep may resume with others.
LAUNCH_ONLY = {"launcher", "nproc_per_node"}
TRAIN_LAUNCH_ONLY = {"progress", "tensorboard", "wandb_project", "wandb_run_name", "threads", "log_interval"}


def _results_only(config: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in config.items() if k not in LAUNCH_ONLY}
    train = kept.get("train")
    if isinstance(train, dict):
        kept["train"] = {k: v for k, v in train.items() if k not in TRAIN_LAUNCH_ONLY}
    return kept


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def _rel(path: Path, root: Path) -> str:
    """Paths inside the sweep directory are stored relative to it (the directory can be moved)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


# --------------------------------------------------------------------------------------------------
# Data: the clean corpus, one noisy shard set per run, the extra domains


def _prepare_data(config: SweepConfig, out: Path, grid: list[RunSpec]) -> dict[str, Any]:
    if config.data is None:
        raise UsageError(
            f"sweep {config.name!r} has no clean corpus; set data = a bundled corpus name or a shard set "
            "made with `noisylm prepare` (e.g. --set data=/data/openwebtext)"
        )
    from noisylm.data.shards import ShardSet

    clean = _corpus(config.data, out / "data" / "clean", config.tokenizer)
    clean_set = ShardSet.open(clean)
    # Bundled domains are tokenized like the clean corpus, whichever way that was prepared (a trained
    # BPE is reused from the clean shard set, so that every domain shares its ids).
    trained = clean if clean_set.tokenizer_record() else None
    domains = {
        name: _corpus(source, out / "data" / name, clean_set.tokenizer, tokenizer_from=trained)
        for name, source in config.domains.items()
    }
    for name, path in domains.items():
        other = ShardSet.open(path)
        if (
            other.tokenizer != clean_set.tokenizer
            or other.vocab_size != clean_set.vocab_size
            or other.tokenizer_record().get("tokenizer_sha256")
            != clean_set.tokenizer_record().get("tokenizer_sha256")
        ):
            raise NoisyLMError(
                f"domain {name!r} ({path}) uses tokenizer {other.tokenizer} but the clean corpus uses "
                f"{clean_set.tokenizer}; prepare both with the same --tokenizer"
            )
    noisy: dict[str, Path] = {}
    for run in grid:
        if run.kind is None:
            continue
        target = out / "data" / run.name
        if not (target / "manifest.json").is_file():
            print(f"injecting {run.kind} noise at alpha={run.alpha:g} -> {target}", file=sys.stderr)
            _inject(clean, target, run, config)
        noisy[run.name] = target
    return {"clean": clean, "domains": domains, "noisy": noisy}


def _corpus(source: str, target: Path, tokenizer: str, tokenizer_from: Path | None = None) -> Path:
    """A shard set for ``source``: an existing prepared directory, or a bundled corpus prepared once."""
    path = Path(source).expanduser()
    if (path / "manifest.json").is_file():
        return path
    from noisylm.data.corpora import bundled_corpora

    if source not in bundled_corpora():
        raise UsageError(
            f"{source!r} is neither a shard set (no manifest.json) nor a bundled corpus "
            f"({', '.join(bundled_corpora())}); prepare it first with `noisylm prepare`"
        )
    if not (target / "manifest.json").is_file():
        from noisylm.data.preparation import prepare

        print(f"preparing bundled corpus {source} ({tokenizer}) -> {target}", file=sys.stderr)
        prepare(
            None,
            target,
            corpus=source,
            tokenizer=tokenizer,
            tokenizer_from=str(tokenizer_from) if tokenizer_from else None,
            overwrite=True,
        )
    return target


def _inject(clean: Path, target: Path, run: RunSpec, config: SweepConfig) -> None:
    from noisylm.data.injection import inject

    inject(
        clean,
        target,
        kind=run.kind,
        alpha=run.alpha,
        seed=config.noise_seed,
        placement=config.placement,
        overwrite=True,
        **run.params,
    )


# --------------------------------------------------------------------------------------------------
# Training one run


def _plan_run(config: SweepConfig, out: Path, run: RunSpec, data: dict[str, Any]) -> dict[str, Any]:
    data_dir = data["clean"] if run.kind is None else data["noisy"][run.name]
    train = train_config_for(config, data_dir, data["domains"])
    run_dir = out / "runs" / run.name
    config_path = out / "configs" / f"{run.name}.json"
    entry = {
        "name": run.name,
        "kind": run.kind,
        "alpha": run.alpha,
        "params": run.params,
        "data": _rel(data_dir, out),
        "run_dir": _rel(run_dir, out),
        "train_config": _rel(config_path, out),
    }
    return {
        "entry": entry,
        "train": train,
        "config_path": config_path,
        "command": train_command(config, config_path, run_dir),
    }


def train_config_for(config: SweepConfig, data_dir: Path, domains: dict[str, Path]) -> dict[str, Any]:
    """The TrainConfig fields of one run: the shared recipe plus this run's data and eval sets."""
    values = copy.deepcopy(config.train)
    values["data"] = str(Path(data_dir).resolve())
    values["eval_sets"] = {name: str(Path(p).resolve()) for name, p in domains.items()}
    values["seed"] = config.seed
    return values


def train_command(config: SweepConfig, config_path: Path, run_dir: Path) -> str:
    """The shell command that trains (or resumes) one run; what a cluster scheduler launches."""
    return shlex.join(_train_argv(config, config_path, run_dir, head=None))


def _train_argv(config: SweepConfig, config_path: Path, run_dir: Path, head: list[str] | None) -> list[str]:
    args = ["train", str(config_path), "--out", str(run_dir), "--resume"]
    if config.launcher == "torchrun":
        launcher = head or ["torchrun"]
        return [
            *launcher,
            "--standalone",
            f"--nproc_per_node={config.nproc_per_node}",
            "-m",
            "noisylm",
            *args,
        ]
    return [*(head or ["noisylm"]), *args]


def _train_one(config: SweepConfig, plan: dict[str, Any], run_dir: Path, resume: bool) -> None:
    if config.launcher == "torchrun":
        # This interpreter's torchrun, whatever is on PATH.
        argv = _train_argv(
            config, plan["config_path"], run_dir, head=[sys.executable, "-m", "torch.distributed.run"]
        )
        result = subprocess.run(argv, check=False)
        if result.returncode != 0:
            raise NoisyLMError(f"torchrun exited with code {result.returncode}; see its output above")
        return
    from noisylm.training import TrainConfig, train

    train(TrainConfig.from_dict(dict(plan["train"])), run_dir, resume=resume, overwrite=not resume)


_SUMMARY_LOCK = threading.Lock()


def _train_subprocess(plan: dict[str, Any], run_dir: Path, resume: bool) -> None:
    """One run as its own single-threaded `noisylm train` process (for ``parallel`` > 1)."""
    argv = [sys.executable, "-m", "noisylm", "train", str(plan["config_path"]), "--out", str(run_dir)]
    argv += ["--resume" if resume else "--overwrite", "--threads", "1", "--progress", "false"]
    result = subprocess.run(argv, check=False, capture_output=True, text=True)
    if result.returncode in (1, 2):  # the trainer refused or failed: one line that says why
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit code {result.returncode}"]
        raise NoisyLMError(lines[-1])
    if result.returncode != 0:  # killed or interrupted: the run stays resumable
        raise _Stopped(f"stopped with exit code {result.returncode}; run the sweep again to resume it")


class _Stopped(Exception):
    """A run's process was killed or interrupted (not a failure of the run itself)."""


def _record_failure(run_dir: Path, message: str) -> None:
    """Mark a run as failed unless the trainer already wrote its own failed summary."""
    if run_status(run_dir) != "failed":
        atomic_write_json(run_dir / "summary.json", {"status": "failed", "error": message})


# --------------------------------------------------------------------------------------------------
# Summary


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (a torn last line from a killed run is ignored)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def final_eval(run_dir: Path) -> dict[str, Any] | None:
    """The last eval line of a run: ``{"iter", "tokens", "clean_tokens", "eval": {...}}``."""
    evals = [m for m in read_metrics(run_dir) if "eval" in m]
    return evals[-1] if evals else None


def write_summary(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re)write ``summary.json`` and ``summary.md`` from ``sweep.json`` and the run directories."""
    out = Path(sweep_dir)
    meta = read_json(out / "sweep.json", "sweep config")
    clean_name = meta.get("clean_run")
    rows = []
    for entry in meta["runs"]:
        run_dir = out / entry["run_dir"]
        status = run_status(run_dir)
        last = final_eval(run_dir)
        row = {
            **{k: entry[k] for k in ("name", "kind", "alpha")},
            "alpha_achieved": _alpha_achieved(out / entry["data"]),
            "status": status,
            "iter": last["iter"] if last else None,
            "tokens": last["tokens"] if last else None,
            "clean_tokens": last.get("clean_tokens") if last else None,
            "eval": last["eval"] if last else {},
            "run_dir": entry["run_dir"],
        }
        if status == "failed":
            row["error"] = read_json(run_dir / "summary.json", "run summary").get("error")
        rows.append(row)
    clean = next((r for r in rows if r["name"] == clean_name), None)
    clean_val = (clean or {}).get("eval", {}).get("val")
    for row in rows:
        val = row["eval"].get("val")
        comparable = clean_val is not None and val is not None and row["iter"] == (clean or {}).get("iter")
        row["val_increase"] = val - clean_val if comparable else None
        row["val_increase_rel"] = (val - clean_val) / clean_val if comparable else None
        row["val_increase_rel_per_alpha"] = (
            row["val_increase_rel"] / row["alpha"] if comparable and row["alpha"] > 0 else None
        )
    summary = {
        "format": SWEEP_FORMAT,
        "name": meta["name"],
        "clean_run": clean_name,
        "counts": {
            s: sum(r["status"] == s for r in rows) for s in ("finished", "interrupted", "pending", "failed")
        },
        "runs": rows,
        "provenance": provenance({"sweep_dir": str(out)}, meta["config"].get("seed")),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def _alpha_achieved(data_dir: Path) -> float | None:
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return None
    noise = read_json(manifest, "shard manifest").get("noise")
    return float(noise.get("alpha_achieved", 0.0)) if noise else 0.0


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: status and final numbers of every run."""
    domains = sorted({k for r in summary["runs"] for k in r["eval"]} - {"val", "noise"})
    head = [
        "run",
        "kind",
        "α",
        "status",
        "iter",
        "clean val loss",
        "Δ vs clean",
        "Δ rel",
        "Δ rel / α",
        "noise loss",
    ]
    head += [f"{d} loss" for d in domains]
    lines = [
        f"# Sweep `{summary['name']}`",
        "",
        ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n) or "no runs",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary["runs"]:
        cells = [
            r["name"],
            r["kind"] or "clean",
            f"{r['alpha']:g}",
            r["status"],
            _fmt(r["iter"], "d"),
            _fmt(r["eval"].get("val"), ".4f"),
            _fmt(r["val_increase"], "+.4f"),
            _fmt(r["val_increase_rel"], "+.2%"),
            _fmt(r["val_increase_rel_per_alpha"], "+.3f"),
            _fmt(r["eval"].get("noise"), ".4f"),
        ] + [_fmt(r["eval"].get(d), ".4f") for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in summary["runs"] if r.get("error")]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- `{r['name']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)
