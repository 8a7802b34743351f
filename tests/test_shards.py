"""Shard format: opening, noise spans, compact manifests and `verify` catching every kind of damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

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


# ------------------------------------------------------------------ hash check when a stage reads a split


@pytest.fixture
def clean_copy(tmp_path, shakespeare_bytes):
    path = tmp_path / "clean"
    shutil.copytree(shakespeare_bytes, path)  # copy2 keeps mtime_ns, so the recorded stamps still hold
    return path


def _bytes_read() -> int:
    """Bytes this process has read with read() so far: Linux's own counter (/proc/self/io `rchar`), so
    a re-hash shows up as the file's size read, and a memmap (no read() calls) as nothing."""
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs Linux /proc/self/io to count the bytes read")
    return next(int(line.split()[1]) for line in io.read_text().splitlines() if line.startswith("rchar:"))


def _read_cost(shards: ShardSet, split: str = "train") -> int:
    before = _bytes_read()
    shards.tokens(split)
    return _bytes_read() - before


def _flip_in_place(file: Path, position: int = 100) -> None:
    with open(file, "r+b") as fh:  # same size, manifest untouched
        fh.seek(position)
        byte = fh.read(1)[0]
        fh.seek(position)
        fh.write(bytes([byte ^ 1]))


def test_manifest_records_size_and_mtime_of_every_split(shakespeare_bytes, noisy_bytes):
    for path in (shakespeare_bytes, noisy_bytes):
        manifest = json.loads((path / "manifest.json").read_text())
        for info in manifest["splits"].values():
            stat = (path / info["file"]).stat()
            assert (info["bytes"], info["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)


def test_unchanged_file_is_trusted_without_rehashing(clean_copy):
    shards = ShardSet.open(clean_copy)
    assert _read_cost(shards) < 4096  # the sha256 is trusted: train.bin is not read


def test_touched_mtime_rehashes_once_and_passes_when_the_content_is_the_same(clean_copy):
    train = clean_copy / "train.bin"
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    shards = ShardSet.open(clean_copy)
    assert _read_cost(shards) >= stat.st_size  # re-hashed (streamed): the whole file read once ...
    assert _read_cost(shards) < 4096  # ... and not again by the same opened set


def test_manifest_without_size_and_mtime_rehashes(clean_copy):
    _edit_manifest(
        clean_copy, lambda m: [info.pop(k) for info in m["splits"].values() for k in ("bytes", "mtime_ns")]
    )
    assert _read_cost(ShardSet.open(clean_copy)) >= (clean_copy / "train.bin").stat().st_size
    _flip_in_place(clean_copy / "train.bin")
    with pytest.raises(NoisyLMError, match="train.bin does not match the sha256"):
        ShardSet.open(clean_copy).tokens("train")


def test_a_flipped_byte_is_refused_with_one_line_naming_file_and_verify(clean_copy):
    _flip_in_place(clean_copy / "train.bin")  # the write moves the mtime
    shards = ShardSet.open(clean_copy)  # sizes still match
    with pytest.raises(NoisyLMError) as info:
        shards.tokens("train")
    message = str(info.value)
    assert "\n" not in message and str(clean_copy / "train.bin") in message
    assert f"noisylm verify {clean_copy}" in message
    assert shards.tokens("val") is not None  # the untouched split is fine


def test_a_size_change_is_refused_and_rehashed(clean_copy):
    with open(clean_copy / "train.bin", "ab") as fh:
        fh.write(b"\x00\x00")  # one more (whole) token
    with pytest.raises(NoisyLMError, match="train.bin holds .* tokens but the manifest says"):
        ShardSet.open(clean_copy)
    unchecked = ShardSet.open(clean_copy, check_sizes=False)  # past the size check, the hash catches it
    with pytest.raises(NoisyLMError, match="does not match the sha256"):
        unchecked.file("train")


def test_same_size_edit_with_restored_mtime_is_trusted_but_verify_finds_it(clean_copy):
    """The documented limit of the size+mtime shortcut: only `noisylm verify` always re-hashes."""
    train = clean_copy / "train.bin"
    stat = train.stat()
    _flip_in_place(train)
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _read_cost(ShardSet.open(clean_copy)) < 4096
    assert any("train.bin sha256 differs" in p for p in verify(clean_copy))


def test_train_resume_inject_and_scan_refuse_a_corrupted_split(tmp_path, clean_copy, capsys):
    run = tmp_path / "run"
    tiny = ["--model", "tiny", "--block-size", "16", "--batch-size", "2", "--eval-interval", "1",
            "--eval-iters", "1", "--checkpoint-interval", "1", "--dtype", "float32", "--threads", "1",
            "--progress", "false", "--tensorboard", "false", "--device", "cpu"]  # fmt: skip
    assert main(["train", "--data", str(clean_copy), "--out", str(run), "--max-iters", "1", *tiny]) == 0
    capsys.readouterr()
    _flip_in_place(clean_copy / "train.bin", position=4000)
    for argv in (
        ["train", "--data", str(clean_copy), "--out", str(run), "--resume", "--max-iters", "2", *tiny],
        ["inject", str(clean_copy), "--alpha", "0.1", "--out", str(tmp_path / "noisy"), "--quiet"],
        ["scan", str(clean_copy), "--out", str(tmp_path / "scan")],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "train.bin does not match the sha256" in err, err
        assert f"run `noisylm verify {clean_copy}`" in err
    assert not (tmp_path / "noisy").exists() and not (tmp_path / "scan").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "run"]
