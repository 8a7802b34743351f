"""Brute-force references shared by the tests of `noisylm.scan`'s modules."""

from __future__ import annotations

import numpy as np


def span_mask(spans: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of length ``n``: True inside the ``[offset, length]`` spans."""
    mask = np.zeros(n, dtype=bool)
    for offset, length in np.asarray(spans).reshape(-1, 2).tolist():
        mask[offset : offset + length] = True
    return mask


def random_spans(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` sorted, disjoint, non-empty spans inside [0, n)."""
    edges = np.sort(rng.choice(n, size=2 * count, replace=False))
    return np.stack([edges[0::2], edges[1::2] - edges[0::2]], axis=1)


def prop1_by_hand(alpha: float, k: float, p_c: float, p_n: float) -> dict:
    """Proposition 1 written out from the paper's closed forms (Sec. 3.3; docs/theory.md), independently
    of `noisylm.theory.formulas`: η, α*, the statement, and the clean-loss increase −log(1 − ε/p_c) at the
    optimum ε = max(η, 0) and at the bound (0, 3η, 2η, or the root ε₀ of f in (η, p_c) by bisection).
    None where the bound reaches p_c (no bound)."""
    import math

    eta = alpha * p_c - (1 - alpha) * k * p_n
    alpha_star = k * p_n / (p_c + k * p_n)

    def increase(eps: float) -> float | None:
        return None if eps >= p_c else -math.log(1 - eps / p_c)

    def f(eps: float) -> float:  # L(P^m,h*) − L(P^m,h), Eq. 17
        return (1 - alpha) * math.log((p_c - eps) / p_c) + alpha * math.log((p_n + eps / k) / p_n)

    if eta <= 0:
        statement, bound_eps = "1", 0.0
    elif alpha < 1 / 3 and k > alpha * (1 - 3 * alpha) * p_c / ((1 - alpha) * (2 - 3 * alpha) * p_n):
        statement, bound_eps = "3a", 3 * eta
    elif alpha > 1 / 2 and k > (2 * alpha - 1) * p_c / (2 * (1 - alpha) * p_n):
        statement, bound_eps = "3b", 2 * eta
    else:
        statement, lo, hi = "2", eta, p_c * (1 - 1e-15)
        for _ in range(200):  # f > 0 at η, f → −∞ at p_c
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        bound_eps = lo
    return {
        "eta": eta,
        "alpha_star": alpha_star,
        "statement": statement,
        "increase_optimum": increase(max(eta, 0.0)),
        "increase_bound": increase(bound_eps),
    }
