"""Chunked passes over a memmap (`noisylm.scan.streaming`): the chunk size never changes the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from noisylm.scan import streaming as St
from scan_helpers import random_spans, span_mask


def test_stride_sums_and_window_means_brute_force():
    rng = np.random.default_rng(0)
    table = rng.normal(size=50)
    stride, window = 4, 16
    for n in (3, 16, 101, 400):
        tokens = rng.integers(0, 50, size=n).astype(np.uint16)
        values = table.astype(np.float32)[tokens].astype(np.float64)
        expected = np.array([values[s : s + stride].sum() for s in range(0, n, stride)])
        for chunk in (16, 32, 1 << 20):  # chunks of whole windows, as ScanConfig makes them
            np.testing.assert_allclose(St.stride_sums(tokens, table, stride, chunk), expected, rtol=1e-6)
        means = St.window_means(expected, n, stride, window)
        starts = range(0, max(n - window, 0) + 1, stride) if n >= window else [0]
        brute = [values[s : s + window].mean() for s in starts]
        if n % stride == 0 or n < window:
            np.testing.assert_allclose(means, brute, rtol=1e-9)
        else:  # the last window may end in the short last block: it averages what it covers
            np.testing.assert_allclose(means[: len(brute)], brute, rtol=1e-9)


def test_span_counts_and_log_unigram():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 30, size=2000).astype(np.uint16)
    spans = random_spans(rng, len(tokens), 9)
    expected = np.bincount(tokens[span_mask(spans, len(tokens))], minlength=30)
    assert np.array_equal(St.span_counts(tokens, spans, 30), expected)
    counts = np.array([0, 1, 3])
    assert np.exp(St.log_unigram(counts, 1.0)) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
