"""Training/eval windows: paired (common random numbers) and uniform sampling, resumable, rank-split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError
from noisylm.training.data import TrainWindows, eval_windows

CPU = torch.device("cpu")


def make_shards(path: Path, train: np.ndarray, val: np.ndarray, vocab: int = 257, spans=None) -> Path:
    """A minimal shard set by hand, following the manifest contract."""
    path.mkdir(parents=True)
    splits = {}
    for name, tokens in (("train", train), ("val", val)):
        np.asarray(tokens, dtype=np.uint16).tofile(path / f"{name}.bin")
        splits[name] = {"file": f"{name}.bin", "tokens": len(tokens), "documents": None, "sha256": None}
    noise = None
    if spans is not None:
        noise_tokens = np.concatenate([train[o : o + n] for o, n in spans])
        noise_tokens.astype(np.uint16).tofile(path / "noise.bin")
        splits["noise"] = {
            "file": "noise.bin",
            "tokens": len(noise_tokens),
            "documents": None,
            "sha256": None,
        }
        n_noise = len(noise_tokens)
        noise = {
            "kind": "uniform",
            "spans": [list(map(int, s)) for s in spans],
            "clean_tokens": len(train) - n_noise,
            "noise_tokens": n_noise,
            "alpha_achieved": n_noise / len(train),
        }
    manifest = {
        "format": "noisylm-shards/1",
        "tokenizer": "bytes",
        "vocab_size": vocab,
        "eot_id": 256,
        "dtype": "uint16",
        "splits": splits,
        "noise": noise,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def clean_windows(windows: TrainWindows, n_slots: int) -> list[np.ndarray]:
    plan = windows.plan(n_slots)
    batch = windows.batch(plan, CPU)
    rows = torch.cat([batch.x, batch.y[:, -1:]], dim=1).numpy()
    return [row for row, (source, _) in zip(rows, plan, strict=True) if source == 0]


def test_paired_noisy_run_sees_the_clean_runs_windows_in_order(shakespeare_bytes, noisy_bytes):
    clean = TrainWindows(ShardSet.open(shakespeare_bytes), 64, "paired", seed=7)
    noisy = TrainWindows(ShardSet.open(noisy_bytes), 64, "paired", seed=7)
    assert noisy.clean_len == clean.clean_len == len(clean.train)
    noisy_clean = clean_windows(noisy, 400)
    reference = clean_windows(clean, len(noisy_clean))
    assert len(reference) == len(noisy_clean) > 250
    assert all(np.array_equal(a, b) for a, b in zip(noisy_clean, reference, strict=True))
    # and they are real windows of the clean text
    text = np.asarray(clean.train)
    start = int(clean._clean.many(0, 1)[0])
    assert np.array_equal(reference[0], text[start : start + 65])


def test_paired_noise_rate_and_noise_windows(noisy_bytes):
    shards = ShardSet.open(noisy_bytes)
    windows = TrainWindows(shards, 32, "paired", seed=0)
    record = shards.noise
    assert windows.noise_rate == pytest.approx(record["noise_tokens"] / shards.splits["train"].tokens)
    plan = windows.plan(20000)
    rate, n = windows.noise_rate, len(plan)
    share = (plan[:, 0] == 1).mean()
    assert abs(share - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # binomial, 4 sigma
    noise = np.asarray(shards.tokens("noise"))
    rows = np.flatnonzero(plan[:, 0] == 1)[:20]
    batch = windows.batch(plan[rows], CPU)
    for x, start in zip(batch.x.numpy(), plan[rows, 1], strict=True):
        assert np.array_equal(x, noise[start : start + 32])
    assert batch.clean_tokens == 0
    assert windows.clean_tokens(plan) == int((plan[:, 0] == 0).sum()) * 32


def test_paired_reads_clean_text_around_interleaved_spans(tmp_path):
    rng = np.random.default_rng(0)
    clean_text = rng.integers(0, 200, 3000)
    spans = [(100, 50), (400, 7), (1200, 300)]
    pieces, pos, prev = [], 0, 0
    for offset, length in spans:  # build train.bin = clean text with noise (ids >= 200) spliced in
        pieces.append(clean_text[pos : pos + offset - prev])
        pos += offset - prev
        pieces.append(rng.integers(200, 256, length))
        prev = offset + length
    pieces.append(clean_text[pos:])
    train = np.concatenate(pieces)
    noisy = make_shards(tmp_path / "noisy", train, clean_text[:500], spans=spans)
    parent = make_shards(tmp_path / "clean", clean_text, clean_text[:500])
    a = clean_windows(TrainWindows(ShardSet.open(noisy), 100, "paired", seed=3), 300)
    b = clean_windows(TrainWindows(ShardSet.open(parent), 100, "paired", seed=3), len(a))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all((w < 200).all() for w in a)  # no window contains noise


def test_uniform_matches_nanogpt_range_and_counts_clean_tokens(tmp_path):
    train = np.arange(1000) % 250
    spans = [(300, 100), (900, 100)]
    shards = ShardSet.open(make_shards(tmp_path / "s", train, train[:100], spans=spans))
    windows = TrainWindows(shards, 50, "uniform", seed=0)
    plan = windows.plan(5000)
    assert plan[:, 1].min() >= 0 and plan[:, 1].max() == len(train) - 50 - 1  # randint(len - block)
    mask = shards.clean_mask() if hasattr(shards, "clean_mask") else None
    if mask is None:
        mask = np.ones(len(train), bool)
        for o, n in spans:
            mask[o : o + n] = False
    brute = sum(int(mask[s : s + 50].sum()) for s in plan[:, 1])
    assert windows.clean_tokens(plan) == brute
    batch = windows.batch(plan[:3], CPU)
    for x, y, s in zip(batch.x.numpy(), batch.y.numpy(), plan[:3, 1], strict=True):
        assert np.array_equal(x, train[s : s + 50]) and np.array_equal(y, train[s + 1 : s + 51])


@pytest.mark.parametrize("sampler", ["paired", "uniform"])
def test_deterministic_chunking_and_resume(noisy_bytes, sampler):
    shards = ShardSet.open(noisy_bytes)
    whole = TrainWindows(shards, 32, sampler, seed=11).plan(10000)  # crosses generator blocks
    parts = TrainWindows(shards, 32, sampler, seed=11)
    first = parts.plan(3333)
    resumed = TrainWindows(shards, 32, sampler, seed=11)
    resumed.load_state_dict(json.loads(json.dumps(parts.state_dict())))  # as a checkpoint stores it
    rest = np.concatenate([resumed.plan(6000), resumed.plan(667)])
    assert np.array_equal(whole, np.concatenate([first, rest]))
    other_seed = TrainWindows(shards, 32, sampler, seed=12).plan(100)
    assert not np.array_equal(whole[:100], other_seed)


def test_eval_windows_fixed_by_seed(shakespeare_bytes):
    tokens = ShardSet.open(shakespeare_bytes).tokens("val")
    a = eval_windows("val", tokens, 64, 40, seed=1234, where="x")
    b = eval_windows("val", tokens, 64, 40, seed=1234, where="x")
    assert np.array_equal(a.starts, b.starts) and a.starts.max() < len(tokens) - 64
    per_rank = [list(a.batches(4, 64, rank, 2)) for rank in (0, 1)]
    rows = sorted(x[i, 0].item() for batches in per_rank for x, _ in batches for i in range(len(x)))
    assert rows == sorted(int(tokens[s]) for s in a.starts)  # the ranks split the windows exactly


def test_block_longer_than_split_is_one_clear_error(tmp_path):
    shards = ShardSet.open(make_shards(tmp_path / "s", np.arange(100) % 250, np.arange(20)))
    with pytest.raises(NoisyLMError, match="fewer than block_size"):
        TrainWindows(shards, 128, "paired", seed=0)
    with pytest.raises(NoisyLMError, match="eval set 'val'.*smaller block_size"):
        eval_windows("val", shards.tokens("val"), 32, 4, seed=0, where="x")
