"""The model-free detectors (`noisylm.scan.detectors`) on a synthetic corpus with known noise: text with
sequential structure over a few ids, uniform noise over all of them."""

from __future__ import annotations

import numpy as np
import pytest

from noisylm.scan.config import ScanConfig
from noisylm.scan.detectors import detect_mixture, detect_unigram
from noisylm.scan.features import window_features
from noisylm.scan.streaming import log_unigram
from scan_helpers import span_mask

VOCAB = 257
NOISE = np.array([[3000, 400], [9000, 250], [15000, 600]])


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    """A Markov chain over ids 0..39 (next = previous + 1, 2 or 3 mod 40) with uniform noise in NOISE."""
    rng = np.random.default_rng(0)
    steps = rng.choice([1, 2, 3], size=20000, p=[0.6, 0.3, 0.1])
    tokens = (np.cumsum(steps) % 40).astype(np.uint16)
    for offset, length in NOISE.tolist():
        tokens[offset : offset + length] = rng.integers(0, VOCAB, size=length)
    return tokens


def _f1(spans: np.ndarray, n: int) -> float:
    got, truth = span_mask(spans, n), span_mask(NOISE, n)
    return 2 * (got & truth).sum() / (got.sum() + truth.sum())


def test_unigram_detector_finds_the_noise(corpus):
    counts = np.bincount(corpus, minlength=VOCAB)
    detection = detect_unigram(corpus, counts, ScanConfig())
    assert _f1(detection.spans, len(corpus)) >= 0.95
    # threshold = median + robust_z robust standard deviations of the window scores
    med = np.median(detection.window_scores)
    mad = np.median(np.abs(detection.window_scores - med))
    assert detection.threshold == pytest.approx(med + 6.0 * 1.4826 * mad, rel=1e-6)


def test_mixture_detector_finds_the_noise(corpus):
    counts = np.bincount(corpus, minlength=VOCAB)
    config = ScanConfig()
    features = window_features(
        corpus, -log_unigram(counts, config.smoothing), config.window, config.chunk_tokens
    )
    detection = detect_mixture(corpus, counts, features, config)
    assert _f1(detection.spans, len(corpus)) >= 0.95
    assert detection.threshold == 0.0 and detection.details["seed_windows"] > 0
    assert detection.details["bigram"]["kept_tokens"] == int(detection.spans[:, 1].sum())
    spans = detection.spans
    assert np.all(spans[1:, 0] >= spans[:-1, 0] + spans[:-1, 1])  # sorted, disjoint
