"""The paper's Section 3 figures and tables, regenerated from a sweep's run directories.

`report(sweep_dir)` reads the sweep through `SweepDir` (which run has which noise kind and α, each
run's ``metrics.jsonl`` and its shard set under ``data/``) and writes one folder per section:

    report/runs/   the per-run table: final clean loss, increase vs clean (absolute, relative,
                   relative / α, at equal clean tokens), loss on the noise and on other domains
    report/fig2/   Fig. 2 (a) clean val loss vs iteration, (b) difference to the clean run at the same
                   iteration, (c) difference at the same number of clean-token iterations (calibrated)
    report/fig3/   Fig. 3 (a) loss on the injected noise, (b) kinds of noise at equal α (uniform vs
                   Gaussian), (c) their clean-loss difference to the clean run
    report/fig4/   Fig. 4 loss and loss difference on every other domain
    report/fig8/   Fig. 8 token prior distributions of the clean data and of each noise kind
    report/index.html   every section (also the theory one) on one self-contained page

Each section folder holds PNGs, Markdown/CSV tables and a ``section.json``; `write_index`
(`noisylm.experiments.index_page`) turns all of them into ``index.html``. The comparisons with the clean
run are in `noisylm.experiments.comparison`. Outputs are deterministic: the same run directories give
byte-identical files (only ``report/provenance.json`` carries a timestamp).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_write_json, atomic_write_text, provenance
from noisylm.data.shards import entropy_nats
from noisylm.errors import NoisyLMError
from noisylm.experiments.comparison import (
    RunCurves,
    diff_same_clean_tokens,
    diff_same_iter,
    final_row,
    sweep_curves,
)
from noisylm.experiments.index_page import write_index
from noisylm.experiments.replicates import NO_INTERVAL, replicate_differences
from noisylm.experiments.rundir import SweepDir
from noisylm.plotting import figure_row, save_png

__all__ = ["report", "token_priors", "write_index"]  # write_index: also here for `noisylm theory`

KIND_STYLE = {None: "-", "uniform": "-", "boosted": "--", "gaussian": ":", "mojibake": "-.", "corpus": "-."}
DPI = 110


# --------------------------------------------------------------------------------------------------
# The report


def report(sweep_dir: str | os.PathLike) -> Path:
    """Write every experiment section of ``sweep_dir/report`` and its ``index.html``; return the folder."""
    sweep = SweepDir.open(sweep_dir)
    runs = sweep_curves(sweep)
    if not runs:
        raise NoisyLMError(
            f"no run in {sweep.path} has logged an evaluation yet; run or resume the sweep first"
        )
    out = sweep.path / "report"
    clean = next((r for r in runs if r.name == sweep.clean_run), None)
    domains = sorted({n for r in runs for n in r.evals} - {"val", "noise"})
    vocab = next((int(r.manifest["vocab_size"]) for r in sweep.runs if r.manifest is not None), None)

    # Each run's table row against the clean run of its own replicate; the figures draw replicate 0
    # (the replicates' spread is in the paired-differences section).
    replicate_of = {r.name: r.replicate for r in sweep.runs}
    cleans = {replicate_of[r.name]: r for r in runs if r.kind is None and sweep.clean_run is not None}
    _runs_section(out / "runs", runs, cleans, domains, replicate_of)
    _replicates_section(out / "replicates", sweep)
    first = [r for r in runs if replicate_of[r.name] == 0]
    _fig2_section(out / "fig2", first, clean)
    _fig3_section(out / "fig3", first, clean, vocab)
    _fig4_section(out / "fig4", first, clean, domains)
    _fig8_section(out / "fig8", sweep)
    _downstream_section(out / "downstream", sweep)
    atomic_write_json(out / "provenance.json", provenance({"sweep_dir": str(sweep.path)}, sweep.seed))
    write_index(out)
    return out


class _Section:
    """Collects the items of one report section and writes its ``section.json``."""

    def __init__(self, folder: Path, title: str, order: int):
        self.folder, self.title, self.order = folder, title, order
        self.items: list[dict[str, str]] = []
        folder.mkdir(parents=True, exist_ok=True)

    def figure(self, fig: Any, name: str, caption: str) -> None:
        save_png(fig, self.folder / name, dpi=DPI)
        self.items.append({"type": "figure", "path": name, "caption": caption})

    def table(self, rows: list[dict[str, Any]], stem: str, caption: str, formats: dict[str, str]) -> None:
        columns = list(rows[0]) if rows else []
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else _csv_value(row[c]) for c in columns])
        atomic_write_text(self.folder / f"{stem}.csv", buffer.getvalue())
        md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            md.append("| " + " | ".join(_cell(row[c], formats.get(c, "")) for c in columns) + " |")
        atomic_write_text(self.folder / f"{stem}.md", f"{caption}\n\n" + "\n".join(md) + "\n")
        self.items.append({"type": "table", "path": f"{stem}.md", "csv": f"{stem}.csv", "caption": caption})

    def text(self, text: str) -> None:
        self.items.append({"type": "text", "text": text})

    def write(self) -> None:
        atomic_write_json(
            self.folder / "section.json", {"title": self.title, "order": self.order, "items": self.items}
        )


def _csv_value(value: Any) -> str:
    return format(value, ".6g") if isinstance(value, float) else str(value)


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) if spec else str(value)


def _style(run: RunCurves, runs: list[RunCurves]) -> dict[str, Any]:
    """Colour by α (darker = more noise), line style by noise kind; the clean run in black."""
    if run.kind is None:
        return {"color": "black", "linestyle": "-", "linewidth": 1.6, "label": run.label}
    from matplotlib import colormaps

    alphas = sorted({r.alpha for r in runs if r.kind is not None})
    position = alphas.index(run.alpha) / max(len(alphas) - 1, 1)
    color = colormaps["plasma"](0.15 + 0.7 * position)
    return {"color": color, "linestyle": KIND_STYLE.get(run.kind, "-."), "linewidth": 1.3, "label": run.label}


def _runs_section(
    folder: Path,
    runs: list[RunCurves],
    cleans: dict[int, RunCurves],
    domains: list[str],
    replicate_of: dict[str, int],
) -> None:
    section = _Section(folder, "Final numbers per run", 10)
    rows = [final_row(r, cleans.get(replicate_of[r.name]), domains) for r in runs]
    formats = {
        "alpha": "g",
        "alpha_achieved": ".4f",
        "clean_val_loss": ".4f",
        "abs_increase": "+.4f",
        "rel_increase": "+.2%",
        "rel_increase_per_alpha": "+.3f",
        "abs_increase_equal_clean_tokens": "+.4f",
        "noise_loss": ".4f",
        **{f"{d}_loss": ".4f" for d in domains},
    }
    section.table(
        rows,
        "runs",
        "Final clean validation loss of every run; its increase over the clean run at the same iteration "
        "(absolute, relative, relative / α: the paper reports about 1% for 20% noise, i.e. ≈ 0.05·α) and "
        "after the same number of clean training tokens; loss on the run's own noise and on other domains.",
        formats,
    )
    if not cleans:
        section.text("The sweep has no clean run, so increases over the clean run are not available.")
    elif max(replicate_of.values(), default=0) > 0:
        section.text("Replicate r (runs named -rR) is compared with the clean run of the same replicate.")
    section.write()


def _replicates_section(folder: Path, sweep: SweepDir) -> None:
    section = _Section(folder, "Paired differences over replicates", 15)
    rows = replicate_differences(sweep)
    n = sweep.replicates
    section.text(
        f"{n} replicate{'s' if n > 1 else ''} of every run (replicate r trains with seed + r and data seed "
        "+ r on the same data). Each difference is paired within a replicate; the mean over replicates "
        "is given with its 95% t interval, and 'within noise' when the interval contains 0. The eval "
        "windows' standard error measures evaluation sampling, not the training chaos that dominates "
        "at this scale, so it is not the interval given here."
        + (f" {NO_INTERVAL}: set `replicates` to 3 or more for intervals." if n == 1 else "")
    )
    if rows:
        table = [
            {
                "comparison": r["comparison"],
                "measure": r["measure"],
                "replicates": r["n"],
                "mean": r["mean"],
                "low": r["low"],
                "high": r["high"],
                "verdict": "–"
                if r["within_noise"] is None
                else ("within noise" if r["within_noise"] else "0 outside"),
            }
            for r in rows
        ]
        section.table(
            table,
            "differences",
            "Paired differences (relative to the clean run's final clean validation loss): mean and "
            "95% interval over replicates.",
            {"mean": "+.2%", "low": "+.2%", "high": "+.2%"},
        )
    else:
        section.text("No paired difference yet: needs finished clean and noisy runs of the same replicate.")
    section.write()


def _fig2_section(folder: Path, runs: list[RunCurves], clean: RunCurves | None) -> None:
    section = _Section(folder, "Fig. 2: clean validation loss", 20)
    fig, (ax,) = figure_row()
    for run in runs:
        if run.loss("val") is not None:
            ax.plot(run.iters, run.loss("val"), **_style(run, runs))
    ax.set(xlabel="iteration", ylabel="NTP loss on clean validation", title="(a) clean validation loss")
    _finish(ax)
    section.figure(fig, "fig2a.png", "(a) Next-token loss on the clean validation set as training proceeds.")
    if clean is None:
        section.text("No clean run: Fig. 2(b) and 2(c) compare against it and are skipped.")
        section.write()
        return
    noisy = [r for r in runs if r.kind is not None]
    fig, (ax,) = figure_row()
    for run in noisy:
        x, y = diff_same_iter(run, clean)
        ax.plot(x, y, **_style(run, runs))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(
        xlabel="iteration", ylabel="loss(noisy) − loss(clean)", title="(b) difference at the same iteration"
    )
    _finish(ax)
    section.figure(
        fig,
        "fig2b.png",
        "(b) Clean-loss difference between each noisy run and the clean run at the same iteration.",
    )
    fig, (ax,) = figure_row()
    for run in noisy:
        x, y = diff_same_clean_tokens(run, clean)
        ax.plot(x, y, **_style(run, runs))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(
        xlabel="iterations of clean data",
        ylabel="loss(noisy) − loss(clean)",
        title="(c) difference at equal clean tokens",
    )
    _finish(ax)
    section.figure(
        fig,
        "fig2c.png",
        "(c) Calibrated: difference after the same number of clean training tokens (the noisy run at "
        "iteration i has seen only its clean share of i iterations; the clean run's loss is interpolated "
        "between its evals, from its first eval after the start on).",
    )
    section.write()


def _fig3_section(folder: Path, runs: list[RunCurves], clean: RunCurves | None, vocab: int | None) -> None:
    section = _Section(folder, "Fig. 3: loss on the injected noise", 30)
    noisy = [r for r in runs if r.kind is not None and r.loss("noise") is not None]
    if not noisy:
        section.text("No noisy run has logged a loss on its noise yet.")
        section.write()
        return
    fig, (ax,) = figure_row()
    for run in noisy:
        ax.plot(run.iters, run.loss("noise"), **_style(run, runs))
    if vocab:
        ax.axhline(
            math.log(vocab),
            color="grey",
            linewidth=0.8,
            linestyle="--",
            label=f"log V = {math.log(vocab):.2f}",
        )
    ax.set(
        xlabel="iteration", ylabel="NTP loss on the training noise", title="(a) loss on the injected noise"
    )
    _finish(ax)
    section.figure(
        fig,
        "fig3a.png",
        "(a) Loss on the noise in each run's own training set; uniform noise cannot go below log V.",
    )
    # (b), (c): noise kinds at the same α (the paper: 5% uniform vs 5% Gaussian).
    by_alpha: dict[float, list[RunCurves]] = {}
    for run in noisy:
        by_alpha.setdefault(run.alpha, []).append(run)
    groups = {a: rs for a, rs in sorted(by_alpha.items()) if len({r.kind for r in rs}) > 1}
    if not groups:
        section.text("Fig. 3(b)/(c) compare noise kinds at the same α; the sweep has one kind per α.")
        section.write()
        return
    fig, (ax_b,) = figure_row()
    fig_c, (ax_c,) = figure_row()
    for group in groups.values():
        for run in group:
            ax_b.plot(run.iters, run.loss("noise"), **_style(run, runs))
            if clean is not None:
                x, y = diff_same_iter(run, clean)
                ax_c.plot(x, y, **_style(run, runs))
    ax_b.set(xlabel="iteration", ylabel="NTP loss on the training noise", title="(b) noise loss by kind")
    _finish(ax_b)
    alphas = ", ".join(f"{a:g}" for a in groups)
    section.figure(fig, "fig3b.png", f"(b) Loss on the noise for different kinds of noise at α = {alphas}.")
    if clean is not None:
        ax_c.axhline(0.0, color="black", linewidth=0.8)
        ax_c.set(
            xlabel="iteration", ylabel="loss(noisy) − loss(clean)", title="(c) clean-loss difference by kind"
        )
        _finish(ax_c)
        section.figure(
            fig_c,
            "fig3c.png",
            f"(c) Clean validation loss minus the clean run's for the kinds of noise at α = {alphas}: "
            "Prop. 1 predicts less harm from noise the model can learn (higher p_n).",
        )
    section.write()


def _fig4_section(folder: Path, runs: list[RunCurves], clean: RunCurves | None, domains: list[str]) -> None:
    section = _Section(folder, "Fig. 4: other domains", 40)
    if not domains:
        section.text("The sweep evaluates no other domain; add one under [domains] in its config.")
    for domain in domains:
        fig, (ax_loss, ax_diff) = figure_row(ncols=2)
        for run in runs:
            if run.loss(domain) is not None:
                ax_loss.plot(run.iters, run.loss(domain), **_style(run, runs))
            if clean is not None and run.kind is not None:
                x, y = diff_same_iter(run, clean, domain)
                ax_diff.plot(x, y, **_style(run, runs))
        ax_loss.set(xlabel="iteration", ylabel=f"NTP loss on {domain}", title=f"loss on {domain}")
        ax_diff.axhline(0.0, color="black", linewidth=0.8)
        ax_diff.set(xlabel="iteration", ylabel="loss(noisy) − loss(clean)", title=f"difference on {domain}")
        _finish(ax_loss)
        _finish(ax_diff)
        section.figure(
            fig,
            f"fig4-{domain}.png",
            f"Loss on the {domain} domain (not trained on) and its difference to the clean run.",
        )
    section.write()


def _fig8_section(folder: Path, sweep: SweepDir) -> None:
    section = _Section(folder, "Fig. 8: token prior distributions", 50)
    panels = token_priors(sweep)
    if not panels:
        section.text("The sweep's shard sets are not under data/; Fig. 8 needs them.")
        section.write()
        return
    fig, axes = figure_row(ncols=len(panels), width=4.0, height=3.2)
    for ax, (title, counts) in zip(axes, panels, strict=True):
        prior = counts / max(counts.sum(), 1)
        if len(prior) <= 1024:
            ax.bar(np.arange(len(prior)), prior, width=1.0, color="tab:blue", linewidth=0)
        else:  # 50k bars draw slowly and alias; a line shows the same shape
            ax.plot(np.arange(len(prior)), prior, color="tab:blue", linewidth=0.4)
        ax.set(xlabel="token id", ylabel="prior probability", title=title)
        ax.set_xlim(0, len(prior))
    section.figure(
        fig, "fig8.png", "Token prior distribution of the clean training data and of each kind of noise."
    )
    rows = []
    for title, counts in panels:
        prior = counts / max(counts.sum(), 1)
        rows.append(
            {
                "data": title,
                "tokens": int(counts.sum()),
                "distinct_ids": int((counts > 0).sum()),
                "entropy_nats": entropy_nats(counts),
                "top_id": int(np.argmax(counts)),
                "top_prior": float(prior.max()),
            }
        )
    section.table(
        rows,
        "fig8",
        "Token priors: entropy of the unigram distribution (nats; log V for uniform noise) and the most "
        "frequent id.",
        {"entropy_nats": ".3f", "top_prior": ".4f"},
    )
    section.write()


def _downstream_section(folder: Path, sweep: SweepDir) -> None:
    """Table 1 at sweep scale, from ``SWEEP/downstream/downstream.json`` when the stage has run."""
    from noisylm.experiments import downstream

    source = sweep.path / "downstream" / "downstream.json"
    if not source.is_file():
        return
    from noisylm.artifacts import read_json

    result = read_json(source, "downstream results")
    section = _Section(folder, "Table 1: noisy pre-training -> downstream probes", 70)
    section.text(downstream.report_text(result))
    columns = (
        [c for c in result["table1"][0] if c not in ("run", "model", "replicates")]
        if result["table1"]
        else []
    )
    rows = [
        {"model": r["model"], **{c: downstream.cell_text(r[c]) for c in columns}} for r in result["table1"]
    ]
    if rows:
        section.table(rows, "table1", "Test accuracy (%), mean ± std over probe seeds.", {})
    diffs = []
    for r in result["differences"]:
        interval, verdict = downstream.difference_text(r)
        diffs.append(
            {
                "comparison": r["comparison"],
                "head": r["head"],
                "loss": r["loss"],
                "pairs": r["pairs"],
                "mean (points)": r["mean"],
                "95% interval": interval,
                "verdict": verdict,
            }
        )
    if diffs:
        section.table(
            diffs,
            "differences",
            "Accuracy of each noisy run minus the clean run of its replicate, paired by probe seed "
            "(percentage points), with the 95% t interval over the pairs.",
            {"mean (points)": "+.2f"},
        )
    section.write()


def token_priors(sweep: SweepDir) -> list[tuple[str, np.ndarray]]:
    """Token counts of the clean training split and of the noise of each kind (its largest-α run)."""
    panels: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    # Clean first, then each kind in plan order, taking the run with the most noise tokens.
    order = {kind: i for i, kind in enumerate(dict.fromkeys(r.kind for r in sweep.runs))}
    for run in sorted(sweep.runs, key=lambda r: (order[r.kind], -r.alpha)):
        label = run.kind or "clean"
        if label in seen or run.manifest is None:
            continue
        shards = run.shards()
        split = "train" if run.kind is None else "noise"
        if not shards.has(split):
            continue
        counts = shards.token_counts(split)
        panels.append(("clean data" if run.kind is None else f"{label} noise", counts))
        seen.add(label)
    return panels


def _finish(ax: Any) -> None:
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7)
