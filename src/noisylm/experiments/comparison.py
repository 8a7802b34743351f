"""Each run against the clean run: `RunCurves` (a run's eval curves, from `SweepDir`), the loss
difference at the same iteration (Fig. 2b) and after the same number of clean tokens (Fig. 2c), and the
per-run table row (the paper's headline: relative increase of the clean loss / α)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from noisylm.experiments.rundir import SweepDir, SweepRun


@dataclass
class RunCurves:
    """One run of the sweep and its eval curves (one entry per evaluated iteration)."""

    name: str
    kind: str | None
    alpha: float
    alpha_achieved: float | None
    iters: np.ndarray  # eval iterations
    tokens: np.ndarray  # training tokens consumed at each eval
    clean_tokens: np.ndarray  # clean training tokens consumed at each eval
    evals: dict[str, np.ndarray]  # eval-set name -> loss at each eval (NaN where missing)
    status: str

    @property
    def label(self) -> str:
        return "clean (α = 0)" if self.kind is None else f"{self.kind} α = {self.alpha:g}"

    def loss(self, name: str) -> np.ndarray | None:
        values = self.evals.get(name)
        return values if values is not None and np.isfinite(values).any() else None

    @classmethod
    def of(cls, run: SweepRun) -> RunCurves | None:
        """The curves of ``run``; None before its first eval."""
        lines = run.evals()
        if not lines:
            return None
        names = sorted({k for m in lines for k in m["eval"]})
        alpha_achieved = run.alpha_achieved
        tokens = np.array([float(m["tokens"]) for m in lines])
        # Lines without clean_tokens (older runs): the clean share of the tokens, by the data's α.
        fallback = 1.0 - (alpha_achieved if alpha_achieved is not None else run.alpha)
        clean_tokens = np.array(
            [
                float(m["clean_tokens"]) if m.get("clean_tokens") is not None else t * fallback
                for m, t in zip(lines, tokens, strict=True)
            ]
        )
        return cls(
            name=run.name,
            kind=run.kind,
            alpha=run.alpha,
            alpha_achieved=alpha_achieved,
            iters=np.array([int(m["iter"]) for m in lines]),
            tokens=tokens,
            clean_tokens=clean_tokens,
            evals={n: np.array([float(m["eval"].get(n, math.nan)) for m in lines]) for n in names},
            status=run.status,
        )


def sweep_curves(sweep: SweepDir) -> list[RunCurves]:
    """The curves of every run of ``sweep`` that has logged at least one eval, in plan order."""
    return [curves for run in sweep.runs if (curves := RunCurves.of(run)) is not None]


def diff_same_iter(run: RunCurves, clean: RunCurves, name: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(iterations, loss(run) - loss(clean)) at the iterations both runs evaluated (Fig. 2b)."""
    a, b = run.loss(name), clean.loss(name)
    if a is None or b is None:
        return np.zeros(0), np.zeros(0)
    common, ia, ib = np.intersect1d(run.iters, clean.iters, return_indices=True)
    return common, a[ia] - b[ib]


def diff_same_clean_tokens(
    run: RunCurves, clean: RunCurves, name: str = "val"
) -> tuple[np.ndarray, np.ndarray]:
    """(clean-token iterations, loss(run) - loss(clean)) after the same amount of clean data (Fig. 2c).

    The noisy run at eval i has seen ``clean_tokens[i]`` clean tokens; the clean run's loss after that
    many tokens is interpolated linearly between its evals. Only points from the clean run's first eval
    after the start on are compared: before it the loss falls from log V within a few iterations, which
    no straight line between two evals represents. The x axis counts iterations of clean data (clean
    tokens / tokens per iteration of the clean run).
    """
    a, b = run.loss(name), clean.loss(name)
    if a is None or b is None or len(clean.iters) < 3:
        return np.zeros(0), np.zeros(0)
    first = clean.tokens[1] if clean.tokens[0] == 0 else clean.tokens[0]
    keep = np.isfinite(a) & (run.clean_tokens >= first) & (run.clean_tokens <= clean.tokens.max())
    reference = np.interp(run.clean_tokens[keep], clean.tokens, b)
    per_iter = clean.tokens[-1] / max(int(clean.iters[-1]), 1)
    return run.clean_tokens[keep] / per_iter, a[keep] - reference


def final_row(run: RunCurves, clean: RunCurves | None, domains: list[str]) -> dict[str, Any]:
    """The per-run table row (the paper's headline: relative increase of the clean loss / α)."""
    val = run.loss("val")
    row: dict[str, Any] = {
        "run": run.name,
        "kind": run.kind or "clean",
        "alpha": run.alpha,
        "alpha_achieved": run.alpha_achieved,
        "status": run.status,
        "iter": int(run.iters[-1]),
        "tokens": int(run.tokens[-1]),
        "clean_tokens": int(run.clean_tokens[-1]),
        "clean_val_loss": float(val[-1]) if val is not None else None,
        "abs_increase": None,
        "rel_increase": None,
        "rel_increase_per_alpha": None,
        "abs_increase_equal_clean_tokens": None,
        "noise_loss": _last(run.loss("noise")),
    }
    for domain in domains:
        row[f"{domain}_loss"] = _last(run.loss(domain))
    if clean is not None and val is not None:
        iters, diff = diff_same_iter(run, clean)
        if len(iters) and iters[-1] == run.iters[-1]:
            base = float(clean.loss("val")[np.searchsorted(clean.iters, iters[-1])])
            row["abs_increase"] = float(diff[-1])
            row["rel_increase"] = float(diff[-1]) / base
            if run.alpha > 0:
                row["rel_increase_per_alpha"] = row["rel_increase"] / run.alpha
        _, calibrated = diff_same_clean_tokens(run, clean)
        if len(calibrated):
            row["abs_increase_equal_clean_tokens"] = float(calibrated[-1])
    return row


def _last(values: np.ndarray | None) -> float | None:
    if values is None:
        return None
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else None
