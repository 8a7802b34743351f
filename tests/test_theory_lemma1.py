"""Lemma 1 on real shards (`noisylm.theory.lemma1`): every building block against a brute-force reference
on real injected shard sets (append and interleave)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noisylm.data.shards import ShardSet
from noisylm.model import GPT, preset
from noisylm.theory import formulas as T
from noisylm.theory import lemma1 as L1
from noisylm.theory.config import TheoryConfig
from noisylm.theory.measure import window_starts
from noisylm.training.evaluate import token_losses

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory, shakespeare_bytes):
    from noisylm.data.injection import inject

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
        starts = window_starts(n, 64, 200, seed=3)
        labels = L1.noise_labels(shards.noise_spans(), starts, 65)
        mask = ~shards.clean_mask()
        assert np.array_equal(labels, np.stack([mask[s : s + 65] for s in starts]))
        assert labels.any() and not labels.all()


def test_pure_coordinates_brute_force(interleaved, shakespeare_bytes):
    train, spans = interleaved.tokens("train"), interleaved.noise_spans()
    clean_mask = interleaved.clean_mask()
    clean_text, noise = ShardSet.open(shakespeare_bytes).tokens("train"), interleaved.tokens("noise")
    positions = np.random.default_rng(0).integers(0, len(train), size=2000)
    positions = np.concatenate([positions, spans[:, 0], spans[:, 0] + spans[:, 1] - 1, [0, len(train) - 1]])
    q = L1.pure_coordinates(spans, positions)
    brute_clean = np.cumsum(clean_mask) - 1
    brute_noise = np.cumsum(~clean_mask) - 1
    for p, qq in zip(positions, q, strict=True):
        if clean_mask[p]:
            assert qq == brute_clean[p] and clean_text[qq] == train[p]
        else:
            assert qq == brute_noise[p] and noise[qq] == train[p]


def test_counterpart_losses_brute_force(interleaved, shakespeare_bytes):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=24)).eval()
    train, spans = interleaved.tokens("train"), interleaved.noise_spans()
    streams = (ShardSet.open(shakespeare_bytes).tokens("train"), interleaved.tokens("noise"))
    edges = np.concatenate([spans[:, 0], spans[:, 0] + spans[:, 1]])
    edges = edges[edges < len(train) - 30]
    starts = np.sort(
        np.concatenate([edges[edges > 30] - 5, edges[edges > 30] - 20, [int(spans[0, 1]) + 100]])
    )
    labels = L1.noise_labels(spans, starts, 25)
    losses = token_losses(model, train, starts, batch_size=16)
    paired = L1.counterpart_losses(model, losses, starts, labels, spans, streams, TheoryConfig())
    crossing = L1.crossing_targets(labels)
    assert crossing.any() and np.isfinite(paired).all()
    np.testing.assert_array_equal(paired[~crossing], losses[~crossing])
    picked = np.random.default_rng(0).permutation(np.count_nonzero(crossing))[:25]  # single passes are slow
    for w, j in np.transpose(np.nonzero(crossing))[picked]:
        p = starts[w] + j + 1  # the target token in train.bin
        kind = int(labels[w, j + 1])
        q = int(L1.pure_coordinates(spans, np.array([p]))[0])
        stream = streams[kind]
        # the same context length, pure: the tokens before q in its own stream (cyclically at its start)
        window = np.asarray(stream[(q - j - 1 + np.arange(j + 2)) % len(stream)], dtype=np.int64)
        x = torch.from_numpy(window[None, :-1])
        y = torch.from_numpy(window[None, 1:])
        expected = model.token_losses(x, y)[0, -1].item()
        assert paired[w, j] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_expected_crossing_fraction_brute_force():
    spans = np.array([[0, 7], [40, 3], [60, 30], [150, 5]], dtype=np.int64)
    n, block = 200, 16
    starts = np.arange(n - block)
    crossing = L1.crossing_targets(L1.noise_labels(spans, starts, block + 1))
    assert L1.expected_crossing_fraction(spans, n, block) == pytest.approx(crossing.mean(), rel=1e-12)
    assert L1.expected_crossing_fraction(np.zeros((0, 2), np.int64), n, block) == 0.0


def test_lemma1_measure(noisy_bytes, shakespeare_bytes, interleaved):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=32)).eval()
    clean = ShardSet.open(shakespeare_bytes).tokens("train")
    config = TheoryConfig(lemma1_windows=24, batch_size=16)
    for shards in (ShardSet.open(noisy_bytes), interleaved):
        r = L1.lemma1_measure(model, shards, clean, config)
        assert r["lemma1_prediction"] == pytest.approx(
            T.lemma1_mixed_loss(r["alpha_windows"], r["noise_loss_paired"], r["clean_loss_paired"]), rel=1e-9
        )
        if r["crossing_fraction_sampled"] == 0:  # no crossing context drawn: Lemma 1 holds exactly
            assert r["gap"] == pytest.approx(0.0, abs=1e-12)
        assert r["crossing_excess_loss"] is not None  # boundary windows always cross
        assert 0 < r["crossing_fraction_expected"] < 0.01
        assert r["expected_gap"] == pytest.approx(r["crossing_fraction_expected"] * r["crossing_excess_loss"])


def test_crossing_targets_brute_force(interleaved):
    spans = interleaved.noise_spans()
    # windows that straddle each span's start and end, plus pure ones
    starts = np.array(
        [max(0, int(o) - 10) for o, _ in spans] + [int(o + n) - 20 for o, n in spans] + [int(spans[0, 0]) + 1]
    )
    labels = L1.noise_labels(spans, starts, 33)
    got = L1.crossing_targets(labels)
    for w in range(len(starts)):
        for j in range(32):
            kinds = set(labels[w, : j + 2].tolist())
            assert got[w, j] == (len(kinds) == 2)
    assert got.any() and not got.all()
