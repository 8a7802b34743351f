"""Chunked passes over a token memmap (bounded memory): per-stride sums of a per-token table, sliding
window means, token counts inside spans, and the smoothed unigram log-probabilities they feed."""

from __future__ import annotations

import numpy as np


def chunk_starts(n: int, size: int) -> range:
    """Start offsets of the chunks of ``size`` tokens that cover ``n`` tokens."""
    return range(0, n, size)


def stride_sums(tokens: np.ndarray, table: np.ndarray, stride: int, chunk_tokens: int) -> np.ndarray:
    """Sum of ``table[token]`` over each stride-block of tokens (the last block may be short)."""
    n = len(tokens)
    out = np.empty((n + stride - 1) // stride, dtype=np.float64)
    table32 = table.astype(np.float32)
    for start in chunk_starts(n, chunk_tokens):
        values = table32[np.asarray(tokens[start : start + chunk_tokens])]
        full = len(values) - len(values) % stride
        first = start // stride
        out[first : first + full // stride] = values[:full].reshape(-1, stride).sum(axis=1, dtype=np.float64)
        if full < len(values):
            out[first + full // stride] = values[full:].sum(dtype=np.float64)
    return out


def window_means(block_sums: np.ndarray, n: int, stride: int, window: int) -> np.ndarray:
    """Mean per-token score of each window (``window`` tokens, sliding by ``stride``)."""
    per = window // stride
    counts = np.full(len(block_sums), stride, dtype=np.float64)
    if n % stride:
        counts[-1] = n % stride
    if len(block_sums) <= per:
        return np.array([block_sums.sum() / max(counts.sum(), 1.0)])
    cs = np.concatenate([[0.0], np.cumsum(block_sums)])
    cc = np.concatenate([[0.0], np.cumsum(counts)])
    return (cs[per:] - cs[:-per]) / (cc[per:] - cc[:-per])


def span_counts(tokens: np.ndarray, spans: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token counts (int64, length ``vocab_size``) inside the ``[offset, length]`` spans, in batches."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    batch: list[np.ndarray] = []
    size = 0
    for offset, length in spans.tolist():
        batch.append(np.asarray(tokens[offset : offset + length]))
        size += length
        if size >= 1 << 22:
            counts += np.bincount(np.concatenate(batch), minlength=vocab_size)[:vocab_size]
            batch, size = [], 0
    if batch:
        counts += np.bincount(np.concatenate(batch), minlength=vocab_size)[:vocab_size]
    return counts


def log_unigram(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """log q(x) of the add-``smoothing`` unigram estimate from ``counts``."""
    counts = counts.astype(np.float64) + smoothing
    return np.log(counts / counts.sum())
