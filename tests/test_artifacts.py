"""Atomic writes leave either the complete artifact or nothing; provenance and hashing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from noisylm.artifacts import (
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    first_difference,
    provenance,
    read_json,
    read_jsonl,
    remove_stale_builds,
    sha256_file,
)
from noisylm.errors import NoisyLMError


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"data" and [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_dir_swaps_in_complete_directories(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(NoisyLMError, match="already exists; pass --overwrite"), atomic_dir(out):
        pass
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old one is intact
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary leftovers


def test_write_failure_is_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(NoisyLMError, match="cannot create .*check the path"),
        atomic_dir(tmp_path / "file" / "o"),
    ):
        pass
    with pytest.raises(NoisyLMError, match="cannot write"):
        atomic_write_text(tmp_path / "file" / "x.txt", "text")


def test_json_helpers(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"n": np.int64(3), "v": np.arange(2), "p": tmp_path})
    assert read_json(tmp_path / "a.json") == {"n": 3, "v": [0, 1], "p": str(tmp_path)}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(NoisyLMError, match="is not valid JSON"):
        read_json(tmp_path / "bad.json", "config")
    with pytest.raises(NoisyLMError, match="config .*missing.json not found"):
        read_json(tmp_path / "missing.json", "config")
    assert check_output_dir(tmp_path / "new", overwrite=False) == tmp_path / "new"


def test_sha256_and_provenance(tmp_path):
    data = np.random.default_rng(0).bytes(3_000_000)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob", chunk_bytes=1 << 16) == hashlib.sha256(data).hexdigest()
    record = provenance({"alpha": 0.1}, seed=3)
    assert record["config"] == {"alpha": 0.1} and record["seed"] == 3
    assert "noisylm" in record["versions"] and record["created_utc"].endswith("Z")
    json.dumps(record)


def test_atomic_dir_gets_umask_permissions_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_first_difference_names_the_first_changed_key_in_sorted_order():
    assert first_difference({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}) == ""
    assert first_difference({"a": 1, "c": 3}, {"a": 2, "c": 4}) == "a: 1 -> 2"
    assert first_difference({"a": 1}, {"a": 1, "b": None}) == ""  # absent and None read the same
    assert first_difference({"a": 1}, {"a": 1, "z": "x"}) == "z: None -> 'x'"


def test_read_jsonl_keeps_whole_objects_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []  # not written yet
    path.write_text('{"iter": 1}\n[1, 2]\n\n{"iter": 2}\n{"iter": 3, "lo', "utf-8")
    assert read_jsonl(path) == [{"iter": 1}, {"iter": 2}]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: nothing runs under this pid (until it is reused)
    return child.pid


@pytest.mark.skipif(sys.platform != "linux", reason="tells a zombie by /proc")
def test_stale_build_folders_of_dead_processes_on_this_host_are_removed(tmp_path, capsys):
    from noisylm.artifacts import _host_tag

    out, host = tmp_path / "out", _host_tag()
    dead = _dead_pid()
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    zombie.send_signal(signal.SIGKILL)  # killed but not reaped yet: a zombie, which writes nothing
    if sys.platform == "linux":
        while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
    names = {
        "dead": f".out.tmp-{host}-{dead}-abcdefgh",
        "zombie": f".out.tmp-{host}-{zombie.pid}-abcdefgh",
        "live": f".out.tmp-{host}-{os.getpid()}-abcdefgh",  # this process: a build in progress
        "other host": f".out.tmp-{host}x-{dead}-abcdefgh",  # cannot tell from here: keep
        "old, out missing": f".out.old-{host}-{dead}-abcdefgh",  # the only complete copy: keep
        "other output": f".outer.tmp-{host}-{dead}-abcdefgh",
        "no owner": ".out.tmp-abcdefgh",  # an older noisylm's folder: owner unknown, keep
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.bin").write_bytes(b"x")
    removed = remove_stale_builds(out)
    zombie.wait()
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["zombie"]])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed 2 stale build folder(s) of" in err
    assert {p.name for p in tmp_path.iterdir()} == set(names.values()) - {names["dead"], names["zombie"]}

    assert remove_stale_builds(out) == [] and capsys.readouterr().err == ""  # silent when nothing to do
    out.mkdir()  # once the output exists, a dead run's previous version is garbage too
    assert [p.name for p in remove_stale_builds(out)] == [names["old, out missing"]]


def test_atomic_dir_cleans_up_before_building_and_names_its_owner(tmp_path, capsys):
    from noisylm.artifacts import _host_tag

    stale = tmp_path / f".out.tmp-{_host_tag()}-{_dead_pid()}-abcdefgh"
    stale.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        assert not stale.exists() and "removed 1 stale build folder(s)" in capsys.readouterr().err
        assert tmp.name.startswith(f".out.tmp-{_host_tag()}-{os.getpid()}-")
        assert remove_stale_builds(tmp_path / "out") == []  # a live build is never taken for a stale one
        assert tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
