"""From flagged windows to token-exact spans: the token ranges that flagged windows cover, maximal-score
segments (max-sum subarray, recursively), and how many span tokens lie before a point (`coverage`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from noisylm.scan.config import ScanConfig


def flagged_regions(flags: np.ndarray, n: int, stride: int, window: int) -> np.ndarray:
    """Token ranges [start, end) covered by flagged windows (overlapping/adjacent ones merged)."""
    per = window // stride
    n_blocks = (n + stride - 1) // stride
    idx = np.flatnonzero(flags)
    diff = np.bincount(idx, minlength=n_blocks + 1) - np.bincount(
        np.minimum(idx + per, n_blocks), minlength=n_blocks + 1
    )
    covered = np.cumsum(diff[:-1]) > 0
    edges = np.diff(np.concatenate([[0], covered.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1) * stride
    ends = np.minimum(np.flatnonzero(edges == -1) * stride, n)
    return np.stack([starts, ends], axis=1).astype(np.int64) if len(starts) else np.zeros((0, 2), np.int64)


def best_segments(scores: np.ndarray, min_score: float, min_len: int) -> list[tuple[int, int]]:
    """Maximal-score segments of ``scores``: the max-sum subarray, then recursively left and right of it."""
    found: list[tuple[int, int]] = []
    stack = [(0, len(scores))]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < min_len:
            continue
        cs = np.concatenate([[0.0], np.cumsum(scores[lo:hi])])
        running_min = np.minimum.accumulate(cs)
        end = int(np.argmax(cs - running_min))
        start = int(np.argmin(cs[: end + 1]))
        if cs[end] - cs[start] <= min_score:
            continue
        if end - start >= min_len:
            found.append((lo + start, lo + end))
        stack.append((lo, lo + start))
        stack.append((lo + end, hi))
    return sorted(found)


def merge_regions(regions: np.ndarray, margin: int, n: int) -> np.ndarray:
    """Widen token ranges by ``margin`` on both sides and merge the ones that then touch."""
    if len(regions) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.maximum(regions[:, 0] - margin, 0)
    hi = np.minimum(regions[:, 1] + margin, n)
    keep = np.concatenate([[True], lo[1:] > np.maximum.accumulate(hi)[:-1]])
    hi = np.maximum.reduceat(hi, np.flatnonzero(keep))
    return np.stack([lo[keep], hi], axis=1).astype(np.int64)


def segment(
    regions: np.ndarray, token_scores: Callable[[int, int], np.ndarray], config: ScanConfig
) -> np.ndarray:
    """Token-exact spans [offset, length]: maximal-score segments of the per-token scores per region."""
    spans: list[tuple[int, int]] = []
    for a, b in regions.tolist():
        scores = token_scores(a, b)
        spans.extend((a + s, e - s) for s, e in best_segments(scores, config.min_score, config.min_span))
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def coverage(spans: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Number of span tokens before each point (spans sorted and disjoint)."""
    if len(spans) == 0:
        return np.zeros(len(points), dtype=np.int64)
    starts = spans[:, 0]
    ends = spans[:, 0] + spans[:, 1]
    cum = np.concatenate([[0], np.cumsum(spans[:, 1])])
    i = np.searchsorted(starts, points, side="left")
    partial = np.where(i > 0, np.maximum(ends[np.maximum(i - 1, 0)] - points, 0), 0)
    return cum[i] - partial
