"""The paper's Section 3 figures and tables, regenerated from a sweep's run directories.

`report(sweep_dir)` reads ``sweep.json`` (which run has which noise kind and α), each run's
``metrics.jsonl`` and the shard sets under ``data/``, and writes one folder per section:

    report/runs/   the per-run table: final clean loss, increase vs clean (absolute, relative,
                   relative / α, at equal clean tokens), loss on the noise and on other domains
    report/fig2/   Fig. 2 (a) clean val loss vs iteration, (b) difference to the clean run at the same
                   iteration, (c) difference at the same number of clean-token iterations (calibrated)
    report/fig3/   Fig. 3 (a) loss on the injected noise, (b) kinds of noise at equal α (uniform vs
                   Gaussian), (c) their clean-loss difference to the clean run
    report/fig4/   Fig. 4 loss and loss difference on every other domain
    report/fig8/   Fig. 8 token prior distributions of the clean data and of each noise kind
    report/index.html   every section (also the theory one) on one self-contained page

Each section folder holds PNGs, Markdown/CSV tables and a ``section.json``; `write_index` turns all of
them into ``index.html`` with the images embedded, so the page reads offline and can be mailed alone.
Outputs are deterministic: the same run directories give byte-identical files (only
``report/provenance.json`` carries a timestamp).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_write_json, atomic_write_text, provenance, read_json
from noisylm.errors import NoisyLMError
from noisylm.experiments.sweep import read_metrics
from noisylm.plotting import figure_row, save_png

KIND_STYLE = {None: "-", "uniform": "-", "boosted": "--", "gaussian": ":", "mojibake": "-.", "corpus": "-."}
DPI = 110


@dataclass
class Run:
    """One run of the sweep and its eval curve (one entry per eval line of ``metrics.jsonl``)."""

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


def load_runs(sweep_dir: str | os.PathLike) -> tuple[dict[str, Any], list[Run]]:
    """``sweep.json`` and the eval curves of every run that has logged at least one eval."""
    from noisylm.experiments.sweep import run_status

    root = Path(sweep_dir)
    meta = read_json(root / "sweep.json", "sweep config")
    runs = []
    for entry in meta["runs"]:
        run_dir = root / entry["run_dir"]
        evals = [m for m in read_metrics(run_dir) if "eval" in m]
        # A resumed run may log the same iteration twice; keep the last line for each iteration.
        by_iter = {int(m["iter"]): m for m in evals}
        lines = [by_iter[i] for i in sorted(by_iter)]
        if not lines:
            continue
        names = sorted({k for m in lines for k in m["eval"]})
        alpha_achieved = _alpha_achieved(root / entry["data"])
        tokens = np.array([float(m["tokens"]) for m in lines])
        fallback = 1.0 - (alpha_achieved if alpha_achieved is not None else entry["alpha"])
        clean_tokens = np.array(
            [
                float(m["clean_tokens"]) if m.get("clean_tokens") is not None else t * fallback
                for m, t in zip(lines, tokens, strict=True)
            ]
        )
        runs.append(
            Run(
                name=entry["name"],
                kind=entry["kind"],
                alpha=float(entry["alpha"]),
                alpha_achieved=alpha_achieved,
                iters=np.array([int(m["iter"]) for m in lines]),
                tokens=tokens,
                clean_tokens=clean_tokens,
                evals={n: np.array([float(m["eval"].get(n, math.nan)) for m in lines]) for n in names},
                status=run_status(run_dir),
            )
        )
    return meta, runs


def _alpha_achieved(data_dir: Path) -> float | None:
    if not (data_dir / "manifest.json").is_file():
        return None
    noise = read_json(data_dir / "manifest.json", "shard manifest").get("noise")
    return float(noise["alpha_achieved"]) if noise and "alpha_achieved" in noise else (None if noise else 0.0)


# --------------------------------------------------------------------------------------------------
# Comparisons with the clean run


def diff_same_iter(run: Run, clean: Run, name: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(iterations, loss(run) - loss(clean)) at the iterations both runs evaluated (Fig. 2b)."""
    a, b = run.loss(name), clean.loss(name)
    if a is None or b is None:
        return np.zeros(0), np.zeros(0)
    common, ia, ib = np.intersect1d(run.iters, clean.iters, return_indices=True)
    return common, a[ia] - b[ib]


def diff_same_clean_tokens(run: Run, clean: Run, name: str = "val") -> tuple[np.ndarray, np.ndarray]:
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


def final_row(run: Run, clean: Run | None, domains: list[str]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------
# The report


def report(sweep_dir: str | os.PathLike) -> Path:
    """Write every experiment section of ``sweep_dir/report`` and its ``index.html``; return the folder."""
    root = Path(sweep_dir)
    if not (root / "sweep.json").is_file():
        raise NoisyLMError(f"{root} is not a sweep directory (no sweep.json); run `noisylm sweep` first")
    meta, runs = load_runs(root)
    if not runs:
        raise NoisyLMError(f"no run in {root} has logged an evaluation yet; run or resume the sweep first")
    out = root / "report"
    clean = next((r for r in runs if r.name == meta.get("clean_run")), None)
    domains = sorted({n for r in runs for n in r.evals} - {"val", "noise"})
    vocab = _vocab_size(root, meta)

    _runs_section(out / "runs", runs, clean, domains)
    _fig2_section(out / "fig2", runs, clean)
    _fig3_section(out / "fig3", runs, clean, vocab)
    _fig4_section(out / "fig4", runs, clean, domains)
    _fig8_section(out / "fig8", root, meta)
    atomic_write_json(
        out / "provenance.json", provenance({"sweep_dir": str(root)}, meta["config"].get("seed"))
    )
    write_index(out)
    return out


def _vocab_size(root: Path, meta: dict[str, Any]) -> int | None:
    for entry in meta["runs"]:
        manifest = root / entry["data"] / "manifest.json"
        if manifest.is_file():
            return int(read_json(manifest, "shard manifest")["vocab_size"])
    return None


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


def _style(run: Run, runs: list[Run]) -> dict[str, Any]:
    """Colour by α (darker = more noise), line style by noise kind; the clean run in black."""
    if run.kind is None:
        return {"color": "black", "linestyle": "-", "linewidth": 1.6, "label": run.label}
    from matplotlib import colormaps

    alphas = sorted({r.alpha for r in runs if r.kind is not None})
    position = alphas.index(run.alpha) / max(len(alphas) - 1, 1)
    color = colormaps["plasma"](0.15 + 0.7 * position)
    return {"color": color, "linestyle": KIND_STYLE.get(run.kind, "-."), "linewidth": 1.3, "label": run.label}


def _runs_section(folder: Path, runs: list[Run], clean: Run | None, domains: list[str]) -> None:
    section = _Section(folder, "Final numbers per run", 10)
    rows = [final_row(r, clean, domains) for r in runs]
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
    if clean is None:
        section.text("The sweep has no clean run, so increases over the clean run are not available.")
    section.write()


def _fig2_section(folder: Path, runs: list[Run], clean: Run | None) -> None:
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


def _fig3_section(folder: Path, runs: list[Run], clean: Run | None, vocab: int | None) -> None:
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
    by_alpha: dict[float, list[Run]] = {}
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


def _fig4_section(folder: Path, runs: list[Run], clean: Run | None, domains: list[str]) -> None:
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


def _fig8_section(folder: Path, root: Path, meta: dict[str, Any]) -> None:
    section = _Section(folder, "Fig. 8: token prior distributions", 50)
    panels = token_priors(root, meta)
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
        nonzero = prior[prior > 0]
        rows.append(
            {
                "data": title,
                "tokens": int(counts.sum()),
                "distinct_ids": int((counts > 0).sum()),
                "entropy_nats": float(-(nonzero * np.log(nonzero)).sum()),
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


def token_priors(root: Path, meta: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Token counts of the clean training split and of the noise of each kind (its largest-α run)."""
    from noisylm.data.shards import ShardSet

    panels: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    # Clean first, then each kind in grid order, taking the run with the most noise tokens.
    order = {kind: i for i, kind in enumerate(dict.fromkeys(e["kind"] for e in meta["runs"]))}
    for entry in sorted(meta["runs"], key=lambda e: (order[e["kind"]], -e["alpha"])):
        label = entry["kind"] or "clean"
        path = root / entry["data"]
        if label in seen or not (path / "manifest.json").is_file():
            continue
        shards = ShardSet.open(path)
        split = "train" if entry["kind"] is None else "noise"
        if not shards.has(split):
            continue
        counts = _bincount(shards.tokens(split), shards.vocab_size)
        panels.append(("clean data" if entry["kind"] is None else f"{label} noise", counts))
        seen.add(label)
    return panels


def _bincount(tokens: np.ndarray, vocab: int, chunk: int = 1 << 24) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[start : start + chunk]), minlength=vocab)[:vocab]
    return counts


def _finish(ax: Any) -> None:
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7)


# --------------------------------------------------------------------------------------------------
# index.html


def write_index(report_dir: str | os.PathLike) -> Path:
    """(Re)build ``index.html`` from every ``report_dir/*/section.json`` (figures embedded, offline)."""
    report_dir = Path(report_dir)
    sections = []
    for path in sorted(report_dir.glob("*/section.json")):
        spec = read_json(path, "report section")
        sections.append((spec.get("order", 1000), path.parent.name, spec))
    sections.sort(key=lambda s: (s[0], s[1]))
    title = "noisylm report"
    sweep_json = report_dir.parent / "sweep.json"
    if sweep_json.is_file():
        title += f": sweep {read_json(sweep_json, 'sweep config').get('name', '')}"
    body = [f"<h1>{html.escape(title)}</h1>", "<nav><ul>"]
    for _, name, spec in sections:
        body.append(f'<li><a href="#{html.escape(name)}">{html.escape(spec.get("title", name))}</a></li>')
    body.append("</ul></nav>")
    for _, name, spec in sections:
        body.append(f'<section id="{html.escape(name)}"><h2>{html.escape(spec.get("title", name))}</h2>')
        for item in spec.get("items", []):
            body.append(_render_item(report_dir / name, item))
        body.append("</section>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    atomic_write_text(report_dir / "index.html", page)
    return report_dir / "index.html"


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "figure{margin:1em 0}img{max-width:100%}figcaption,p.caption{color:#555;font-size:.9em}"
    "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}section{border-top:1px solid #ddd;margin-top:2em}"
)


def _render_item(folder: Path, item: dict[str, Any]) -> str:
    kind = item.get("type")
    caption = html.escape(item.get("caption", ""))
    if kind == "text":
        return f"<p>{html.escape(item.get('text', ''))}</p>"
    path = folder / item.get("path", "")
    if not path.is_file():
        return f"<p><em>missing: {html.escape(str(path.name))}</em></p>"
    if kind == "figure":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
        image = f'<img src="data:{mime};base64,{data}" alt="{caption}">'
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"
    if kind == "table":
        return f'<p class="caption">{caption}</p>' + _table_html(path)
    return f"<p><em>unknown item type {html.escape(str(kind))}</em></p>"


def _table_html(path: Path) -> str:
    text = path.read_text("utf-8")
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
    else:  # a Markdown pipe table (other Markdown is shown as is)
        lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
        if not rows:
            return f"<pre>{html.escape(text)}</pre>"
    if not rows:
        return "<p><em>empty table</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
