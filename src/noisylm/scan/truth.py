"""Detected spans against the true ones (the manifest of `noisylm inject`): token-level precision, recall,
F1, and α̂ against α."""

from __future__ import annotations

import numpy as np

from noisylm.scan.segmentation import coverage


def span_metrics(predicted: np.ndarray, truth: np.ndarray, n_tokens: int) -> dict[str, float]:
    """Token-level precision, recall, F1 of ``predicted`` spans against ``truth`` spans, and α̂ vs α."""
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.int64).reshape(-1, 2)
    if len(predicted):
        inside = coverage(truth, predicted[:, 0] + predicted[:, 1]) - coverage(truth, predicted[:, 0])
        overlap = int(inside.sum())
    else:
        overlap = 0
    flagged = int(predicted[:, 1].sum())
    true = int(truth[:, 1].sum())
    precision = overlap / flagged if flagged else (1.0 if true == 0 else 0.0)
    recall = overlap / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    alpha = true / n_tokens if n_tokens else 0.0
    alpha_hat = flagged / n_tokens if n_tokens else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alpha": alpha,
        "alpha_hat": alpha_hat,
        "alpha_rel_error": abs(alpha_hat - alpha) / alpha if alpha else float(alpha_hat > 0),
        "true_tokens": true,
        "flagged_tokens": flagged,
        "overlap_tokens": overlap,
    }
