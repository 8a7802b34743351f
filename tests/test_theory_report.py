"""`noisylm theory` against real (tiny) runs, and its building blocks against independent references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisylm import theory as T
from noisylm import theory_report as R
from noisylm.errors import NoisyLMError, UsageError
from noisylm.model import GPT, preset
from noisylm.shards import ShardSet


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory, shakespeare_bytes):
    from noisylm.inject import inject

    out = tmp_path_factory.mktemp("theory") / "interleaved"
    inject(
        shakespeare_bytes,
        out,
        alpha=0.2,
        kind="uniform",
        seed=0,
        placement="interleave",
        progress=False,
        doc_median=40.0,
    )
    return ShardSet.open(out)


def test_noise_labels_match_clean_mask(interleaved, noisy_bytes):
    for shards in (interleaved, ShardSet.open(noisy_bytes)):
        n = shards.splits["train"].tokens
        starts = R.window_starts(n, 64, 200, seed=3)
        labels = R.noise_labels(shards.noise_spans(), starts, 65)
        mask = ~shards.clean_mask()
        assert np.array_equal(labels, np.stack([mask[s : s + 65] for s in starts]))
        assert labels.any() and not labels.all()


def test_window_starts_are_seeded_and_in_range():
    a = R.window_starts(1000, 64, 50, seed=1)
    assert np.array_equal(a, R.window_starts(1000, 64, 50, seed=1))
    assert a.min() >= 0 and a.max() <= 1000 - 65 and np.all(np.diff(a) >= 0)
    with pytest.raises(NoisyLMError, match="shorter than one window"):
        R.window_starts(10, 64, 5, seed=0)


def test_token_losses_match_cross_entropy_of_logits():
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=16)).eval()
    tokens = np.random.default_rng(0).integers(0, 257, size=400).astype(np.uint16)
    starts = np.array([0, 5, 100, 383])
    got = R.token_losses(model, tokens, starts, batch_size=3, device="cpu")
    rows = torch.from_numpy(np.stack([tokens[s : s + 17].astype(np.int64) for s in starts]))
    with torch.no_grad():
        logits = model.logits(rows[:, :-1])
    ref = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).double(), rows[:, 1:].reshape(-1), reduction="none"
    )
    assert got.shape == (4, 16)
    np.testing.assert_allclose(got.ravel(), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_lemma1_measure_bookkeeping(noisy_bytes, shakespeare_bytes, interleaved):
    # An untrained model still obeys the bookkeeping: the mixed loss is the share-weighted sum of its
    # four parts (linearity), and append has far fewer crossing contexts than interleave.
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=32)).eval()
    clean = ShardSet.open(shakespeare_bytes).tokens("train")
    config = R.TheoryConfig(lemma1_windows=48, batch_size=16)
    rows = {}
    for shards in (ShardSet.open(noisy_bytes), interleaved):
        r = R.lemma1_measure(model, shards, clean, config)
        parts = [
            ("pure_clean", r["pure_clean_fraction"]),
            ("pure_noise", r["pure_noise_fraction"]),
            ("crossing_clean", r["crossing_clean_fraction"]),
            ("crossing_noise", r["crossing_noise_fraction"]),
        ]
        assert sum(f for _, f in parts) == pytest.approx(1.0)
        total = sum(f * r[f"{name}_loss"] for name, f in parts if f > 0)
        assert total == pytest.approx(r["measured_mixed_loss"], rel=1e-9)
        assert r["lemma1_prediction"] == pytest.approx(
            T.lemma1_mixed_loss(r["alpha_windows"], r["noise_loss_pure"], r["clean_loss_pure"])
        )
        rows[r["placement"]] = r
    assert rows["append"]["placement"] == "append" and rows["interleave"]["placement"] == "interleave"


def test_crossing_targets_brute_force(interleaved):
    spans = interleaved.noise_spans()
    # windows that straddle each span's start and end, plus pure ones
    starts = np.array(
        [max(0, int(o) - 10) for o, _ in spans] + [int(o + n) - 20 for o, n in spans] + [int(spans[0, 0]) + 1]
    )
    labels = R.noise_labels(spans, starts, 33)
    got = R.crossing_targets(labels)
    for w in range(len(starts)):
        for j in range(32):
            kinds = set(labels[w, : j + 2].tolist())
            assert got[w, j] == (len(kinds) == 2)
    assert got.any() and not got.all()


def test_config_and_sweep_dir_errors(tmp_path):
    with pytest.raises(UsageError, match="--k"):
        R.TheoryConfig(k=0.0)
    with pytest.raises(UsageError, match="eval-windows"):
        R.TheoryConfig(eval_windows=0)
    with pytest.raises(NoisyLMError, match="not a sweep directory"):
        R.theory(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [], "clean_run": None}))
    with pytest.raises(NoisyLMError, match="no clean run"):
        R.theory(tmp_path)


def test_fig9_caption_numbers(tmp_path):
    name, caption = R.fig9(tmp_path)
    assert (tmp_path / name).stat().st_size > 1000
    assert "(3b)" in caption and "0.1113" in caption and "0.0541" in caption
    assert math.isclose(float(caption.split("2η = ")[1].split(",")[0]), 0.0058, abs_tol=5e-5)
