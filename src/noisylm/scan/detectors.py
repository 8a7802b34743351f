"""The model-free detectors: the two-component unigram mixture (hard EM, bigram re-check; the default)
and plain unigram surprisal against a robust threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from noisylm.scan.bigram import fit_bigram, refine_with_bigram
from noisylm.scan.config import ScanConfig
from noisylm.scan.features import WindowFeatures, robust_location
from noisylm.scan.segmentation import flagged_regions, merge_regions, segment
from noisylm.scan.streaming import log_unigram, span_counts, stride_sums, window_means


@dataclass
class Detection:
    """What a detector found: token spans, the score of every sliding window, the threshold."""

    spans: np.ndarray  # int64 [n, 2]: offset, length (sorted, disjoint)
    window_scores: np.ndarray  # mean per-token score of each sliding window
    threshold: float  # windows above it were flagged
    score_name: str  # what the window score is, for plots and reports
    details: dict[str, Any] = field(default_factory=dict)


def _feature_outliers(features: WindowFeatures, z: float, log_vocab: float) -> np.ndarray:
    """Aligned windows whose features put them far from the bulk, or that uniform noise explains better."""
    zs = features.robust_z()
    flags = features.surprisal > log_vocab  # uniform noise beats the corpus unigram (LLR > 0)
    flags |= zs["surprisal"] > z
    for name in ("distinct", "id_mean", "id_std"):
        flags |= np.abs(zs[name]) > z
    return flags


def _windows_to_spans(flags: np.ndarray, window: int, n: int) -> np.ndarray:
    idx = np.flatnonzero(flags)
    spans = np.stack([idx * window, np.full(len(idx), window)], axis=1).astype(np.int64)
    if len(spans) and flags.shape[0] * window < n and flags[-1]:
        spans[-1, 1] = n - spans[-1, 0]
    return spans.reshape(-1, 2)


def _detect_with_table(
    tokens: np.ndarray, table: np.ndarray, threshold: float, config: ScanConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Window scores of a per-token score table, then token-exact spans of (table − threshold)."""
    n = len(tokens)
    sums = stride_sums(tokens, table, config.stride, config.chunk_tokens)
    scores = window_means(sums, n, config.stride, config.window)
    regions = merge_regions(
        flagged_regions(scores > threshold, n, config.stride, config.window), config.stride, n
    )
    shifted = table - threshold
    spans = segment(regions, lambda a, b: shifted[np.asarray(tokens[a:b])], config)
    return spans, scores


def detect_mixture(
    tokens: np.ndarray,
    counts: np.ndarray,
    features: WindowFeatures,
    config: ScanConfig,
    reference_counts: np.ndarray | None = None,
) -> Detection:
    """Hard EM on a two-component unigram mixture (clean q_c, noise q_n); score = log q_n − log q_c."""
    vocab = len(counts)
    n = len(tokens)
    log_uniform = -math.log(vocab)
    seed_flags = _feature_outliers(features, config.robust_z, -log_uniform)
    reference_seeds = 0
    if reference_counts is not None:  # uniform noise beats the reference's unigram on the window
        ref_surprisal = -log_unigram(reference_counts, config.smoothing)
        sums = stride_sums(
            tokens[: len(seed_flags) * config.window], ref_surprisal, config.window, config.chunk_tokens
        )
        by_reference = sums / config.window > -log_uniform
        reference_seeds = int((by_reference & ~seed_flags[: len(by_reference)]).sum())
        seed_flags[: len(by_reference)] |= by_reference
    spans = _windows_to_spans(seed_flags, config.window, n)
    threshold = 0.0 if config.threshold is None else config.threshold
    history = []
    table = np.zeros(vocab)
    scores = np.zeros(0)
    log_qc = log_qn = np.full(vocab, log_uniform)
    for _ in range(config.iterations):
        noise_counts = span_counts(tokens, spans, vocab)
        clean_counts = counts - noise_counts
        log_qc = log_unigram(clean_counts, config.smoothing)
        w = config.uniform_weight
        if noise_counts.sum() > 0:
            learned = log_unigram(noise_counts, config.smoothing)
            log_qn = np.logaddexp(math.log(w) + log_uniform, math.log1p(-w) + learned) if w < 1 else learned
        else:
            log_qn = np.full(vocab, log_uniform)
        table = log_qn - log_qc
        previous = int(spans[:, 1].sum())
        spans, scores = _detect_with_table(tokens, table, threshold, config)
        flagged = int(spans[:, 1].sum())
        history.append({"flagged_tokens": flagged, "spans": len(spans)})
        if len(history) > 1 and abs(flagged - previous) <= 1e-3 * max(previous, 1):
            break  # converged
    candidates = spans
    bigram_info: dict[str, Any] = {}
    if config.bigram and len(spans):
        # lenient candidates: windows within candidate_margin of the threshold, plus the current spans
        lenient = flagged_regions(
            scores > threshold - config.candidate_margin, n, config.stride, config.window
        )
        ranges = np.concatenate([lenient, np.stack([spans[:, 0], spans[:, 0] + spans[:, 1]], axis=1)])
        ranges = merge_regions(ranges[np.argsort(ranges[:, 0], kind="stable")], 0, n)
        candidates = np.stack([ranges[:, 0], ranges[:, 1] - ranges[:, 0]], axis=1)
        for _ in range(2):  # the clean bigram model skips the current noise estimate, then re-fits once
            bigram = fit_bigram(tokens, spans, log_qc, config.bigram_sample)
            spans = refine_with_bigram(tokens, candidates, log_qn, bigram, threshold, config)
        bigram_info = {
            "pairs": bigram.pairs,
            "candidate_tokens": int(candidates[:, 1].sum()),
            "candidate_spans": len(candidates),
            "kept_tokens": int(spans[:, 1].sum()),
        }
    return Detection(
        spans=spans,
        window_scores=scores,
        threshold=threshold,
        score_name="mean log q_n(x) - log q_c(x) per token (nats)",
        details={
            "seed_windows": int(seed_flags.sum()),
            "reference_seed_windows": reference_seeds,
            "em_history": history,
            "bigram": bigram_info,
            "score_table_range": [float(table.min()), float(table.max())],
        },
    )


def detect_unigram(tokens: np.ndarray, counts: np.ndarray, config: ScanConfig) -> Detection:
    """Surprisal under the corpus's own unigram distribution; threshold = median + z robust std."""
    surprisal = -log_unigram(counts, config.smoothing)
    n = len(tokens)
    sums = stride_sums(tokens, surprisal, config.stride, config.chunk_tokens)
    scores = window_means(sums, n, config.stride, config.window)
    if config.threshold is None:
        med, robust_std = robust_location(scores)
        threshold = med + config.robust_z * robust_std
    else:
        threshold = config.threshold
    regions = merge_regions(
        flagged_regions(scores > threshold, n, config.stride, config.window), config.stride, n
    )
    shifted = surprisal - threshold
    spans = segment(regions, lambda a, b: shifted[np.asarray(tokens[a:b])], config)
    return Detection(spans, scores, threshold, "mean unigram surprisal per token (nats)")
