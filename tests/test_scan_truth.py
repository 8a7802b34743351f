"""Detected spans against the true ones (`noisylm.scan.truth`): token-mask brute force."""

from __future__ import annotations

import numpy as np
import pytest

from noisylm.scan.truth import span_metrics
from scan_helpers import random_spans, span_mask


def test_span_metrics_match_token_masks():
    rng = np.random.default_rng(0)
    n = 5000
    for _ in range(20):
        truth = random_spans(rng, n, int(rng.integers(1, 15)))
        pred = random_spans(rng, n, int(rng.integers(1, 15)))
        m = span_metrics(pred, truth, n)
        t, p = span_mask(truth, n), span_mask(pred, n)
        tp = (t & p).sum()
        assert m["overlap_tokens"] == tp
        assert m["precision"] == pytest.approx(tp / p.sum())
        assert m["recall"] == pytest.approx(tp / t.sum())
        assert m["f1"] == pytest.approx(2 * tp / (p.sum() + t.sum()))
        assert m["alpha"] == pytest.approx(t.mean()) and m["alpha_hat"] == pytest.approx(p.mean())
        assert m["alpha_rel_error"] == pytest.approx(abs(p.mean() - t.mean()) / t.mean())
    empty = span_metrics(np.zeros((0, 2)), np.zeros((0, 2)), n)
    assert empty["precision"] == 1.0 and empty["recall"] == 1.0 and empty["alpha_hat"] == 0.0
    missed = span_metrics(np.zeros((0, 2)), np.array([[10, 5]]), n)
    assert missed["recall"] == 0.0 and missed["precision"] == 0.0 and missed["f1"] == 0.0
