"""Atomic writes leave either the complete artifact or nothing; provenance and hashing."""

from __future__ import annotations

import hashlib
import json
import os
import stat

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
