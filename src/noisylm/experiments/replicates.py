"""Paired differences over replicates: `paired_interval` (mean of paired differences with a t-based
interval) and `replicate_differences` (each noisy run against the clean run of the same replicate).

A sweep with ``replicates = N`` trains every grid point N times, replicate r with seed + r and
data_seed + r. The training itself is chaotic at small scale (two clean runs that differ only in their
data order end apart by about as much as 1% noise costs), so a difference between two runs means
something only next to its spread over replicates: each replicate gives one paired difference, and the
interval is the t interval of their mean. The eval windows' standard error measures evaluation
sampling, not this, and is not used here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from noisylm.experiments.comparison import RunCurves, diff_same_clean_tokens
from noisylm.experiments.rundir import SweepDir, SweepRun

CONFIDENCE = 0.95
NO_INTERVAL = "1 replicate: no interval"


@dataclass(frozen=True)
class PairedInterval:
    """The mean of ``n`` paired differences and its two-sided t interval (None for n = 1)."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1 in the denominator); None for n = 1
    low: float | None
    high: float | None
    confidence: float = CONFIDENCE

    @property
    def within_noise(self) -> bool | None:
        """Whether the interval contains 0 (the difference is not distinguishable from none)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def describe(self, spec: str = "+.2%", unit: str = "replicate") -> str:
        """``+0.52% [-0.10%, +1.14%] (95%, 3 replicates; within noise)``."""
        if self.low is None or self.high is None:
            return f"{format(self.mean, spec)} (1 {unit}: no interval)"
        verdict = "within noise" if self.within_noise else "0 outside"
        return (
            f"{format(self.mean, spec)} [{format(self.low, spec)}, {format(self.high, spec)}] "
            f"({self.confidence:.0%}, {self.n} {unit}s; {verdict})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_noise": self.within_noise}


def paired_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> PairedInterval:
    """Mean of the paired ``differences`` with its t interval: mean ± t_{(1+c)/2, n-1} · s / √n.

    One difference gives the mean alone (no spread to estimate); identical differences give a
    zero-width interval.
    """
    from scipy import stats

    values = np.asarray(list(differences), dtype=float)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"paired differences must be finite and at least one, got {values.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(values.mean())
    if values.size == 1:
        return PairedInterval(1, mean, None, None, None, confidence)
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, values.size - 1)) * std / math.sqrt(values.size)
    return PairedInterval(int(values.size), mean, std, mean - half, mean + half, confidence)


# --------------------------------------------------------------------------------------------------
# A sweep's paired differences


def replicate_differences(sweep: SweepDir) -> list[dict[str, Any]]:
    """One row per comparison, each a mean over the replicates with its interval:

    - every noisy grid point against the clean run of the same replicate: the relative increase of the
      final clean validation loss (same iteration), and the same after the same number of clean
      training tokens (Fig. 2c, relative to the clean run's final loss);
    - every other noise kind against uniform noise at the same α (relative to the clean run's final
      loss): negative = cheaper than uniform.

    Only replicates whose runs have all evaluated the same final iteration count; a row with none
    is left out.
    """
    curves: dict[str, RunCurves | None] = {run.name: RunCurves.of(run) for run in sweep.runs}
    rows: list[dict[str, Any]] = []
    noisy_points = [p for p in sweep.points if sweep.replicate_runs(p)[0].kind is not None]
    for point in noisy_points:
        same_iter, same_tokens = [], []
        for run in sweep.replicate_runs(point):
            pair = _pair(sweep, curves, run)
            if pair is None:
                continue
            noisy, clean, base = pair
            same_iter.append((noisy.loss("val")[-1] - clean.loss("val")[-1]) / base)
            _, calibrated = diff_same_clean_tokens(noisy, clean)
            if len(calibrated):
                same_tokens.append(float(calibrated[-1]) / base)
        rows += _row(f"{point} vs clean", "clean val loss, relative increase (same iteration)", same_iter)
        rows += _row(
            f"{point} vs clean", "clean val loss, relative increase (same clean tokens)", same_tokens
        )
    by_point = {p: sweep.replicate_runs(p) for p in noisy_points}
    for point, runs in by_point.items():
        kind, alpha = runs[0].kind, runs[0].alpha
        uniform = next(
            (p for p, rs in by_point.items() if rs[0].kind == "uniform" and rs[0].alpha == alpha), None
        )
        if kind == "uniform" or uniform is None:
            continue
        partners = {r.replicate: r for r in by_point[uniform]}
        values = []
        for run in runs:
            other = partners.get(run.replicate)
            a = _pair(sweep, curves, run)
            b = _pair(sweep, curves, other) if other is not None else None
            if a is None or b is None or a[0].iters[-1] != b[0].iters[-1]:
                continue
            values.append((a[0].loss("val")[-1] - b[0].loss("val")[-1]) / a[2])
        rows += _row(f"{point} vs {uniform}", "clean val loss difference, relative to clean", values)
    return rows


def _pair(
    sweep: SweepDir, curves: dict[str, RunCurves | None], run: SweepRun
) -> tuple[RunCurves, RunCurves, float] | None:
    """(the run's curves, its replicate's clean curves, the clean final val loss), when both evaluated
    the same final iteration."""
    clean_run = sweep.clean_of(run)
    if clean_run is None:
        return None
    noisy, clean = curves.get(run.name), curves.get(clean_run.name)
    if noisy is None or clean is None or noisy.loss("val") is None or clean.loss("val") is None:
        return None
    if noisy.iters[-1] != clean.iters[-1]:
        return None
    base = float(clean.loss("val")[-1])
    return (noisy, clean, base) if math.isfinite(base) and base > 0 else None


def _row(comparison: str, measure: str, values: list[float]) -> list[dict[str, Any]]:
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return []
    stat = paired_interval(finite)
    return [
        {
            "comparison": comparison,
            "measure": measure,
            "values": finite,
            **stat.to_dict(),
            "text": stat.describe(),
        }
    ]


def differences_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as Markdown lines (a table, or a sentence when there are none)."""
    if not rows:
        return ["No paired difference yet (needs finished clean and noisy runs of the same replicate)."]
    lines = [
        "| comparison | measure | replicates | mean | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["low"] is None:
            interval, verdict = NO_INTERVAL, "–"
        else:
            interval = f"[{row['low']:+.2%}, {row['high']:+.2%}]"
            verdict = "within noise" if row["within_noise"] else "0 outside the interval"
        cells = [row["comparison"], row["measure"], str(row["n"]), f"{row['mean']:+.2%}", interval, verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
