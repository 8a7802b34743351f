"""Paired statistics over seeds: the difference of two losses run seed for seed, with its uncertainty.

Seed s of every loss starts from the same head weights and sees the training examples in the same
order (see `training.train_head`), so the per-seed difference d_s = acc_loss(s) − acc_ce(s) cancels
what the two runs share. Over n seeds:

- mean d̄, standard error se = sd(d)/√n, and the t-based interval d̄ ± t_{0.975, n−1}·se
  (`scipy.stats.t`); the primary statistic. An interval that contains 0 is "within noise".
- the exact two-sided sign-flip permutation p-value: the share of the 2ⁿ sign vectors ε for which
  |Σ ε_s d_s| ≥ |Σ d_s|. Under "no effect" each d_s is symmetric around 0, so every flip is as
  likely as the observed one. The smallest p it can give is 2/2ⁿ (the observed signs and their
  mirror image): 0.0625 with 5 seeds, so it is reported only from `MIN_SEEDS_FOR_P` = 6 seeds on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SEEDS_FOR_P = 6
MAX_EXACT_SEEDS = 24  # 2^24 sign vectors; more seeds are reported without a p-value


@dataclass(frozen=True)
class PairedDifference:
    """Statistics of per-seed differences d_s (in the units of the inputs, here percentage points)."""

    n: int
    mean: float
    se: float | None  # None with a single seed
    ci95: tuple[float, float] | None  # t-based 95% interval of the mean difference
    p_sign_flip: float | None  # exact sign-flip p-value; None below MIN_SEEDS_FOR_P seeds
    differences: tuple[float, ...]

    @property
    def within_noise(self) -> bool | None:
        """True when the 95% interval contains 0 (None without an interval)."""
        if self.ci95 is None:
            return None
        return self.ci95[0] <= 0 <= self.ci95[1]

    def text(self) -> str:
        """E.g. ``+0.12 [-0.30, +0.54] (within noise)`` or ``+1.20 [+0.50, +1.90], p = 0.008``."""
        if self.ci95 is None:
            return f"{self.mean:+.2f} (1 seed: no interval)"
        text = f"{self.mean:+.2f} [{self.ci95[0]:+.2f}, {self.ci95[1]:+.2f}]"
        if self.within_noise:
            text += " (within noise)"
        if self.p_sign_flip is not None:
            text += f", p = {self.p_sign_flip:.3g}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": round(self.mean, 4),
            "se": None if self.se is None else round(self.se, 4),
            "ci95": None if self.ci95 is None else [round(self.ci95[0], 4), round(self.ci95[1], 4)],
            "within_noise": self.within_noise,
            "p_sign_flip": self.p_sign_flip,
            "differences": [round(d, 4) for d in self.differences],
            "text": self.text(),
        }


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, tuple | None]:
    """(mean, standard error, t-based ``level`` interval of the mean); se and interval are None for n = 1."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    se = float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1)) * se
    return mean, se, (mean - half, mean + half)


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip p-value of the mean of ``differences`` (all 2ⁿ sign vectors)."""
    d = np.asarray(differences, dtype=np.float64)
    n = d.size
    if n == 0 or n > MAX_EXACT_SEEDS:
        raise ValueError(f"the exact sign-flip test takes 1 to {MAX_EXACT_SEEDS} differences, got {n}")
    observed = abs(float(d.sum()))
    # Sums that equal the observed one up to rounding count as "at least as extreme".
    tolerance = 1e-9 * (float(np.abs(d).sum()) + 1e-300)
    # All 2^k signed sums of the first k values, built by doubling; the rest one sign vector at a time.
    head, tail = d[: min(n, 16)], d[min(n, 16) :]
    sums = np.zeros(1)
    for value in head:
        sums = np.concatenate([sums + value, sums - value])
    extreme = 0
    for signs in range(2**tail.size):
        offset = sum(-v if (signs >> i) & 1 else v for i, v in enumerate(tail))
        extreme += int(np.count_nonzero(np.abs(sums + offset) >= observed - tolerance))
    return extreme / 2.0**n


def paired_difference(
    values: Sequence[float], reference: Sequence[float], *, min_seeds_for_p: int = MIN_SEEDS_FOR_P
) -> PairedDifference:
    """Statistics of ``values[s] − reference[s]`` over the seeds s (both lists in seed order)."""
    if len(values) != len(reference) or not values:
        raise ValueError(
            f"paired values need one value per seed on both sides, got {len(values)} and {len(reference)}"
        )
    differences = [float(a) - float(b) for a, b in zip(values, reference, strict=True)]
    mean, se, ci95 = t_interval(differences)
    p = None
    if min_seeds_for_p <= len(differences) <= MAX_EXACT_SEEDS:
        p = sign_flip_p_value(differences)
    return PairedDifference(len(differences), mean, se, ci95, p, tuple(differences))
