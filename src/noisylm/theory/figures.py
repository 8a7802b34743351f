"""The theory section's figures: Fig. 7(a) k over training, Fig. 7(b) L(P^m,h) against ε, Fig. 9 (the
multilingual reading of Appendix D.3) and predicted vs measured clean-loss increase."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.plotting import figure_row, save_png
from noisylm.theory import formulas as T
from noisylm.theory.measure import EvalPoint

FIG9 = {"alpha": 0.55, "k": 1.0, "clean_loss_ref": 2.9, "noise_loss_ref": 2.8}  # Appendix D.3
DPI = 110


def fig9(folder: Path) -> tuple[str, str]:
    """Fig. 9: f(ε) and L(P^c, h) for α = 0.55, k = 1, L(P^c,h*) = 2.9, L(P^n,h*) = 2.8."""
    a, k = FIG9["alpha"], FIG9["k"]
    p_c, p_n = math.exp(-FIG9["clean_loss_ref"]), math.exp(-FIG9["noise_loss_ref"])
    prop = T.proposition1(a, k, p_c, p_n)
    eps = np.linspace(0.0, min(4 * prop.eta, 0.999 * p_c), 400)
    fig, (ax1, ax2) = figure_row(2)
    ax1.plot(eps, T.f_gap(eps, a, k, p_c, p_n), color="C0")
    ax1.axhline(0, color="grey", linewidth=0.8)
    ax2.plot(eps, -np.log(p_c - eps), color="C1")
    for ax in (ax1, ax2):
        ax.axvline(prop.eta, color="C2", linestyle="--", label=f"η = {prop.eta:.4f}")
        ax.axvline(2 * prop.eta, color="C3", linestyle=":", label=f"2η = {2 * prop.eta:.4f} (bound)")
        ax.set_xlabel("ε")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("L(P^m,h*) − L(P^m,h)")
    ax1.set_title("(a) f(ε), Eq. 17")
    ax2.set_ylabel("L(P^c,h)")
    ax2.set_title("(b) clean loss")
    name = "fig9.png"
    save_png(fig, folder / name, dpi=DPI)
    caption = (
        f"Fig. 9 (App. D.3), α = {a}, k = {k:g}, L(P^c,h*) = 2.9, L(P^n,h*) = 2.8: statement "
        f"({prop.statement}) applies, ε ≤ 2η = {2 * prop.eta:.5f}, so the clean loss rises by at most "
        f"{prop.clean_loss_increase_upper:.4f} nats (tight: {prop.clean_loss_increase_upper_exact:.4f}; "
        f"{prop.clean_loss_increase_optimum:.4f} at the optimum ε = η). "
        "The paper's text says 'no more than 0.1'."
    )
    return name, caption


def fig7a(folder: Path, curves: dict[str, list[EvalPoint]]) -> str:
    fig, (ax,) = figure_row(1, 6.0, 3.8)
    for i, (name, points) in enumerate(curves.items()):
        iters = np.array([p.iter for p in points])
        k = np.array([p.k for p in points])
        lb = np.array([p.k_lower_bound for p in points])
        ax.plot(iters, k, marker="o", color=f"C{i}", label=f"{name}: k")
        ax.plot(iters, lb, linestyle="--", color=f"C{i}", alpha=0.6, label=f"{name}: Eq. 13 bound")
    ax.axhline(1, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("k = ε / (ε/k)")
    ax.set_title("(a) k over training (h* = the clean run at the same iteration)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_png(fig, folder / "fig7a.png", dpi=DPI)
    return "fig7a.png"


def fig7b(folder: Path, rows: list[dict[str, Any]]) -> str | None:
    usable = [r for r in rows if "statement" in r]
    if not usable:
        return None
    from matplotlib.figure import Figure

    ncols = min(3, len(usable))
    nrows = math.ceil(len(usable) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows), layout="constrained")
    axes = list(np.ravel(fig.subplots(nrows, ncols, squeeze=False)))
    for ax in axes[len(usable) :]:
        ax.set_visible(False)
    for ax, r in zip(axes, usable, strict=False):
        a, k, p_c, p_n = r["alpha"], r["k"], r["p_c"], r["p_n"]
        eps = np.geomspace(p_c * 1e-5, p_c * 0.999, 400)
        eps = eps[p_n + eps / k <= 1.0]
        curve = T.mixed_loss(eps, a, k, p_c, p_n)
        ref = T.mixed_loss(0.0, a, k, p_c, p_n)
        ax.plot(eps, curve, color="C0", label="L(P^m,h)")
        ax.axhline(ref, color="grey", linewidth=0.8, label="L(P^m,h*)")
        dip = ref - float(curve.min())  # the curve blows up as ε → p_c: show the region around h*
        ax.set_ylim(ref - 1.15 * dip - 0.02, ref + max(0.3, 2 * dip))
        if r["eta"] > 0:
            ax.axvline(r["eta"], color="C2", linestyle="--", label="η (the optimum)")
        if r["statement"] in ("3a", "3b") and r["epsilon_bound"] < p_c:
            ax.axvline(r["epsilon_bound"], color="C4", linestyle="-.", label=f"bound ({r['statement']})")
        if r["measured_epsilon"] > 0:
            ax.axvline(r["measured_epsilon"], color="C3", linestyle=":", label="measured ε")
        ax.set_xscale("log")
        ax.set_xlabel("ε")
        ax.set_title(f"{r['run']}: α={a:.3g}, k={k:.3g}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax.set_ylabel("L(P^m,h) (nats)")
    save_png(fig, folder / "fig7b.png", dpi=DPI)
    return "fig7b.png"


def fig_predicted(folder: Path, rows: list[dict[str, Any]]) -> str | None:
    usable = [r for r in rows if "statement" in r]
    if not usable:
        return None
    fig, (ax,) = figure_row(1, max(5.0, 1.0 * len(usable) + 3), 3.8)
    x = np.arange(len(usable))
    bound = np.array([r["predicted_increase_bound"] for r in usable])
    measured = np.array([r["measured_increase"] for r in usable])
    se = np.array([r["measured_increase_se"] for r in usable])
    top = float(np.nanmax(np.concatenate([measured + 2 * np.nan_to_num(se), [0.0]])))
    shown = np.minimum(bound, 2 * top if top > 0 else 1.0)  # an infinite / huge bound is clipped
    ax.bar(x - 0.2, shown, width=0.36, color="C0", alpha=0.6, label="Prop. 1 bound")
    ax.bar(
        x + 0.2, measured, width=0.36, yerr=2 * se, capsize=3, color="C3", alpha=0.8, label="measured ± 2 SE"
    )
    ax.scatter(
        x - 0.2,
        [r["predicted_increase_optimum"] for r in usable],
        color="k",
        marker="_",
        s=200,
        label="Prop. 1 at the optimum ε = η",
        zorder=3,
    )
    for xi, r, b, s_ in zip(x, usable, bound, shown, strict=True):
        label = f"({r['statement']})" + ("" if b == s_ else f"\n{b:.3g}")
        ax.annotate(label, (xi - 0.2, s_), ha="center", va="bottom", fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x, [r["run"] for r in usable], rotation=20, fontsize=8)
    ax.set_xlim(-0.7, len(usable) - 0.3)
    ax.set_ylabel("L(P^c,h) − L(P^c,h*) (nats)")
    ax.set_title("Clean-loss increase: Prop. 1 vs measured", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    save_png(fig, folder / "predicted_vs_measured.png", dpi=DPI)
    return "predicted_vs_measured.png"
