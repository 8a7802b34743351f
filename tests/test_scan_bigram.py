"""The Witten–Bell bigram model (`noisylm.scan.bigram`) against counting pairs directly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from noisylm.scan import bigram as B
from scan_helpers import span_mask


def test_bigram_model_matches_direct_witten_bell(monkeypatch):
    rng = np.random.default_rng(2)
    vocab = 11
    tokens = rng.integers(0, vocab, size=400).astype(np.uint16)
    exclude = np.array([[100, 50]])
    log_q = np.log(np.full(vocab, 1.0 / vocab))
    keep = ~span_mask(exclude, len(tokens))
    pairs = [
        (int(a), int(b))
        for i, (a, b) in enumerate(zip(tokens[:-1], tokens[1:], strict=True))
        if keep[i] and keep[i + 1]
    ]
    dense = B.fit_bigram(tokens, exclude, log_q)
    monkeypatch.setattr(B, "DENSE_BIGRAM_MAX_VOCAB", 1)  # force the hash-table path
    sparse = B.fit_bigram(tokens, exclude, log_q)
    assert sparse.dense is None and dense.dense is not None
    prev = np.arange(vocab).repeat(vocab)
    cur = np.tile(np.arange(vocab), vocab)
    for a, b in zip(prev.tolist(), cur.tolist(), strict=True):
        c_ab = sum(1 for p in pairs if p == (a, b))
        c_a = sum(1 for p in pairs if p[0] == a)
        t_a = len({p[1] for p in pairs if p[0] == a})
        expected = (c_ab + t_a / vocab) / (c_a + t_a) if c_a else 1.0 / vocab
        for model in (dense, sparse):
            got = model.log_prob(np.array([a]), np.array([b]))[0]
            assert got == pytest.approx(np.log(expected))
    # leave-one-out removes the pair's own occurrence
    a, b = pairs[0]
    c_ab = sum(1 for p in pairs if p == (a, b))
    c_a = sum(1 for p in pairs if p[0] == a)
    t_a = len({p[1] for p in pairs if p[0] == a}) - (c_ab == 1)
    loo = dense.log_prob(np.array([a]), np.array([b]), np.array([True]))[0]
    assert loo == pytest.approx(np.log((c_ab - 1 + t_a / vocab) / (c_a - 1 + t_a)))


def test_bigram_hash_table_counts_are_exact_with_collisions():
    rng = np.random.default_rng(3)
    vocab = 50257
    tokens = rng.integers(0, 300, size=30000).astype(np.uint16)  # many repeated pairs
    tokens[::7] = rng.integers(0, vocab, size=len(tokens[::7]))  # and many rare ones
    model = B.fit_bigram(tokens, np.zeros((0, 2), np.int64), np.log(np.full(vocab, 1.0 / vocab)))
    assert model.dense is None and len(model.overflow_keys) > 0  # collisions happened
    counts = Counter(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True))
    prev = np.concatenate([tokens[:-1], rng.integers(0, vocab, size=5000)]).astype(np.int64)
    cur = np.concatenate([tokens[1:], rng.integers(0, vocab, size=5000)]).astype(np.int64)
    expected = np.array([counts.get((a, b), 0) for a, b in zip(prev.tolist(), cur.tolist(), strict=True)])
    assert np.array_equal(model.pair_counts(prev, cur), expected)


def test_counted_marks_pairs_inside_the_sampled_pieces():
    tokens = np.arange(100, dtype=np.uint16) % 7
    model = B.fit_bigram(
        tokens, np.array([[40, 10]]), np.log(np.full(7, 1 / 7)), sample_tokens=30, piece_tokens=10
    )
    pieces = [tuple(p) for p in model.pieces.tolist()]
    counted = model.counted(0, 100)
    for t in range(100):  # pair (t−1, t) is counted iff both tokens are in one piece and outside the span
        same_piece = any(lo <= t - 1 and t < hi for lo, hi in pieces)
        outside = not (40 <= t - 1 < 50 or 40 <= t < 50)
        assert counted[t] == (t > 0 and same_piece and outside), t
