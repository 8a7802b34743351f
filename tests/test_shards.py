"""Shard format: opening, noise spans, compact manifests and `verify` catching every kind of damage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from noisylm.cli import main
from noisylm.data.shards import ShardSet, verify, write_manifest
from noisylm.errors import NoisyLMError


@pytest.fixture
def noisy_copy(tmp_path, noisy_bytes):
    path = tmp_path / "copy"
    shutil.copytree(noisy_bytes, path)
    return path


def _edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_clean_set_has_no_spans(shakespeare_bytes):
    shards = ShardSet.open(shakespeare_bytes)
    assert shards.noise is None and shards.noise_spans().shape == (0, 2)
    assert shards.noise_spans().dtype == np.int64
    assert shards.clean_mask().all()


def test_noisy_set_spans_and_clean_mask(noisy_bytes):
    shards = ShardSet.open(noisy_bytes)
    ((offset, length),) = shards.noise_spans().tolist()
    mask = shards.clean_mask()
    assert mask[:offset].all() and not mask[offset:].any() and len(mask) == offset + length
    window = shards.clean_mask(offset - 5, offset + 5)
    assert window.tolist() == [True] * 5 + [False] * 5


def test_write_manifest_round_trip(tmp_path):
    manifest = {"format": "x", "noise": {"kind": "uniform", "spans": [[0, 5], [10, 3]]}, "n": np.int64(3)}
    write_manifest(tmp_path / "m.json", manifest)
    text = (tmp_path / "m.json").read_text()
    assert '"spans": [[0,5],[10,3]]' in text
    assert json.loads(text) == {
        "format": "x",
        "noise": {"kind": "uniform", "spans": [[0, 5], [10, 3]]},
        "n": 3,
    }


def test_verify_passes_on_good_sets(shakespeare_bytes, noisy_bytes, shakespeare_gpt2, capsys):
    for path in (shakespeare_bytes, noisy_bytes, shakespeare_gpt2):
        assert verify(path) == []
        assert main(["verify", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def _odd_length(p):
    with open(p / "train.bin", "ab") as fh:
        fh.write(b"\x01")


def _big_token(p):
    data = bytearray((p / "val.bin").read_bytes())
    data[0:2] = np.array([300], dtype=np.uint16).tobytes()  # >= vocab 257
    (p / "val.bin").write_bytes(bytes(data))
    _edit_manifest(p, lambda m: m["splits"]["val"].update(sha256=None))  # only the range check can see it


def _flip_byte(p):
    data = bytearray((p / "train.bin").read_bytes())
    data[100] ^= 1
    (p / "train.bin").write_bytes(bytes(data))


def _flip_noise(p):
    data = bytearray((p / "noise.bin").read_bytes())
    data[10] = (data[10] + 1) % 256
    (p / "noise.bin").write_bytes(bytes(data))
    _edit_manifest(p, lambda m: m["splits"]["noise"].update(sha256=None))


def _eot_in_noise(p):
    manifest = json.loads((p / "manifest.json").read_text())
    offset = manifest["noise"]["spans"][0][0]
    for file, position in (("noise.bin", 0), ("train.bin", offset)):
        data = bytearray((p / file).read_bytes())
        data[2 * position : 2 * position + 2] = np.array([256], dtype=np.uint16).tobytes()
        (p / file).write_bytes(bytes(data))
    _edit_manifest(p, lambda m: [m["splits"][s].update(sha256=None) for s in ("train", "noise")])


@pytest.mark.parametrize(
    "damage, message",
    [
        (_odd_length, "not a multiple of 2"),
        (_big_token, "token id 300 >= vocab size 257"),
        (_eot_in_noise, "outside the recorded noise range [0, 256)"),
        (_flip_byte, "train.bin sha256 differs"),
        (_flip_noise, "noise.bin differs from train.bin in the span"),
        (lambda p: _edit_manifest(p, lambda m: m["splits"]["train"].update(tokens=5)), "manifest says 5"),
        (lambda p: _edit_manifest(p, lambda m: m["splits"]["val"].update(documents=99)), "says 99 documents"),
        (lambda p: _edit_manifest(p, lambda m: m["noise"].update(alpha_achieved=0.3)), "alpha_achieved 0.3"),
        (lambda p: _edit_manifest(p, lambda m: m["noise"].update(spans=[[0, 5]])), "noise tokens"),
        (lambda p: _edit_manifest(p, lambda m: m.update(vocab_size=50257)), "vocab_size=50257"),
        (lambda p: (p / "val.bin").unlink(), "val.bin is missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: _edit_manifest(p, lambda m: m.update(format="other/9")), "format 'other/9'"),
    ],
)
def test_verify_finds_each_problem(noisy_copy, capsys, damage, message):
    damage(noisy_copy)
    problems = verify(noisy_copy)
    assert any(message in p for p in problems), problems
    assert main(["verify", str(noisy_copy)]) == 1
    err = capsys.readouterr().err
    assert message in err and all(line.startswith("noisylm verify: error: ") for line in err.splitlines())


def test_open_refuses_a_manifest_that_does_not_match(noisy_copy, tmp_path):
    _edit_manifest(noisy_copy, lambda m: m["splits"]["train"].update(tokens=5))
    with pytest.raises(NoisyLMError, match="the manifest does not match its files"):
        ShardSet.open(noisy_copy)
    with pytest.raises(NoisyLMError, match="not found"):
        ShardSet.open(tmp_path / "nothing")
    assert verify(tmp_path / "nothing") != []


@pytest.mark.parametrize(
    "damage, message",
    [
        (_odd_length, "not a multiple of 2"),
        (
            lambda p: _edit_manifest(p, lambda m: m["splits"]["train"].update(tokens=5)),
            "does not match its files",
        ),
        (lambda p: (p / "manifest.json").unlink(), "manifest .* not found"),
    ],
)
def test_damaged_sets_are_refused_by_every_command(tmp_path, shakespeare_bytes, capsys, damage, message):
    import re

    bad = tmp_path / "bad"
    shutil.copytree(shakespeare_bytes, bad)
    damage(bad)
    for argv in (
        ["inject", str(bad), "--alpha", "0.1", "--out", str(tmp_path / "out"), "--quiet"],
        ["stats", str(bad), "--out", str(tmp_path / "st")],
        ["merge", str(bad), "--out", str(tmp_path / "merged")],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(message, err), err
    assert not any((tmp_path / name).exists() for name in ("out", "st", "merged"))


def test_out_of_range_ids_are_refused_by_stats(tmp_path, shakespeare_bytes, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(shakespeare_bytes, bad)
    _big_token(bad)
    assert main(["stats", str(bad), "--out", str(tmp_path / "st")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ids >= vocab size 257" in err and not (tmp_path / "st").exists()
