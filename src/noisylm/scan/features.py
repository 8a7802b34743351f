"""Model-free features of every aligned window: surprisal under the corpus unigram, distinct-token ratio,
token-id mean and spread, and how far each window sits from the bulk (robust z-scores)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from noisylm.scan.streaming import chunk_starts


@dataclass
class WindowFeatures:
    """Per aligned window (``window`` tokens): the model-free statistics the issue names."""

    surprisal: np.ndarray  # mean −log q(x) under the corpus unigram, nats
    distinct: np.ndarray  # distinct tokens / window length
    id_mean: np.ndarray  # mean token id
    id_std: np.ndarray  # standard deviation of the token ids

    def robust_z(self) -> dict[str, np.ndarray]:
        """(x − median) / (1.4826·MAD) of each feature: how far a window sits from the bulk."""
        out = {}
        for name, values in asdict(self).items():
            med, robust_std = robust_location(values)
            out[name] = (values - med) / max(robust_std, 1e-6 * max(abs(med), 1.0), 1e-9)
        return out


MAX_QUANTILE_SAMPLE = 1 << 20


def robust_location(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826·MAD), from an evenly strided sample of at most 2^20 values (fast on big corpora)."""
    sample = values[:: max(1, len(values) // MAX_QUANTILE_SAMPLE)]
    med = float(np.median(sample))
    return med, 1.4826 * float(np.median(np.abs(sample - med)))


def window_features(
    tokens: np.ndarray, surprisal_table: np.ndarray, window: int, chunk_tokens: int
) -> WindowFeatures:
    """Features of every aligned window (a tail shorter than a window has none; it is still scored)."""
    n = len(tokens)
    n_windows = max(n // window, 1)
    surprisal = np.empty(n_windows, np.float32)
    distinct = np.empty(n_windows, np.float32)
    id_mean = np.empty(n_windows, np.float32)
    id_std = np.empty(n_windows, np.float32)
    table32 = surprisal_table.astype(np.float32)
    if n < window:  # one short window
        x = np.asarray(tokens[:n])
        surprisal[0] = table32[x].mean() if n else 0.0
        distinct[0] = len(np.unique(x)) / max(n, 1)
        id_mean[0] = x.mean() if n else 0.0
        id_std[0] = x.std() if n else 0.0
        return WindowFeatures(surprisal, distinct, id_mean, id_std)
    for start in chunk_starts(n_windows * window, chunk_tokens):
        x = np.asarray(tokens[start : min(start + chunk_tokens, n_windows * window)]).reshape(-1, window)
        first = start // window
        rows = slice(first, first + len(x))
        surprisal[rows] = table32[x].mean(axis=1)
        ids = x.astype(np.float32)
        mean = ids.mean(axis=1)
        id_mean[rows] = mean
        id_std[rows] = np.sqrt(np.maximum((ids * ids).mean(axis=1) - mean * mean, 0.0))
        xs = np.sort(x, axis=1)
        distinct[rows] = (1 + (xs[:, 1:] != xs[:, :-1]).sum(axis=1)) / window
    return WindowFeatures(surprisal, distinct, id_mean, id_std)
