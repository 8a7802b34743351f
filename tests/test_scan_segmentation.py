"""From flagged windows to token-exact spans (`noisylm.scan.segmentation`): brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from noisylm.scan import segmentation as G
from scan_helpers import random_spans, span_mask


def test_best_segments_is_the_maximum_sum_subarray():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scores = rng.normal(-0.3, 1.0, size=int(rng.integers(5, 60)))
        found = G.best_segments(scores, min_score=0.0, min_len=1)
        best = max(scores[i:j].sum() for i in range(len(scores)) for j in range(i + 1, len(scores) + 1))
        if best <= 0:
            assert found == []
            continue
        assert max(scores[a:b].sum() for a, b in found) == pytest.approx(best)
        for (_, b1), (a2, _) in zip(found, found[1:], strict=False):
            assert b1 <= a2  # disjoint, sorted


def test_flagged_regions_cover_exactly_the_flagged_windows():
    rng = np.random.default_rng(2)
    stride, window = 4, 16
    for n in (37, 64, 200, 203):
        n_windows = max(len(range(0, n, stride)) - window // stride + 1, 1)
        flags = rng.random(n_windows) < 0.2
        regions = G.flagged_regions(flags, n, stride, window)
        covered = np.zeros(n, dtype=bool)
        for w in np.flatnonzero(flags):  # window w covers tokens [w·stride, w·stride + window)
            covered[w * stride : w * stride + window] = True
        got = span_mask(np.stack([regions[:, 0], regions[:, 1] - regions[:, 0]], axis=1), n)
        assert np.array_equal(got, covered)
        assert np.all(regions[1:, 0] > regions[:-1, 1])  # maximal: separate regions do not touch


def test_merge_regions_widens_and_merges():
    regions = np.array([[10, 20], [24, 30], [60, 70], [95, 100]])
    merged = G.merge_regions(regions, 3, 100)
    assert merged.tolist() == [[7, 33], [57, 73], [92, 100]]
    assert G.merge_regions(np.zeros((0, 2), np.int64), 3, 100).shape == (0, 2)


def test_coverage_counts_span_tokens_before_each_point():
    rng = np.random.default_rng(3)
    n = 1000
    spans = random_spans(rng, n, 12)
    points = np.arange(n + 1)
    expected = np.concatenate([[0], np.cumsum(span_mask(spans, n))])
    assert np.array_equal(G.coverage(spans, points), expected)
    assert np.array_equal(G.coverage(np.zeros((0, 2), np.int64), points), np.zeros(n + 1))
