"""Tables (Markdown + CSV) shaped like the paper's: Tables 1-3 (main, with the logistic-regression
reference row), 5 (ablation), 6 (sensitivity); the paired differences to CE; accuracy against
feature noise σ."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from noisylm.artifacts import atomic_write_text
from noisylm.probing.protocol.baseline import LOGREG_LABEL
from noisylm.probing.protocol.config import HEAD_LABELS, LOSS_LABELS, ProbeConfig
from noisylm.probing.protocol.paired import MIN_SEEDS_FOR_P


def method_label(backbone: str, sigma: float, config: ProbeConfig) -> str:
    """A table row's backbone: its name, with the feature noise σ when the probe adds any."""
    return backbone if config.feature_noise == (0.0,) else f"{backbone} σ={sigma:g}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "/"
    if row.get("std") is None:  # a deterministic reference: one number
        return f"{row['mean']:.2f}"
    return f"{row['mean']:.2f} ± {row['std']:.2f}"


def _table(row_names: list[str], lookup, columns: list[tuple[str, str]], heads: tuple[str, ...], avg: bool):
    """Rows × (dataset, head) cells; `lookup(row_name, dataset, head)` -> row dict or None."""
    md_head = ["", *[f"{d} {HEAD_LABELS[h]}" for d, h in columns]]
    csv_head = ["method", *[f"{d} {h} {s}" for d, h in columns for s in ("mean", "std")]]
    if avg:
        md_head += [f"Avg {HEAD_LABELS[h]}" for h in heads]
        csv_head += [f"Avg {h}" for h in heads]
    md = ["| " + " | ".join(md_head) + " |", "|" + "---|" * len(md_head)]
    csv = [",".join(_csv(c) for c in csv_head)]
    for name in row_names:
        cells = [lookup(name, d, h) for d, h in columns]
        md_row = [name, *[_cell(c) for c in cells]]
        csv_row = [name]
        for c in cells:
            csv_row += ("", "") if c is None else (c["mean"], "" if c.get("std") is None else c["std"])
        if avg:
            for h in heads:
                means = [c["mean"] for (d, hh), c in zip(columns, cells, strict=True) if hh == h and c]
                value = statistics.fmean(means) if means else None
                md_row.append("/" if value is None else f"{value:.2f}")
                csv_row.append("" if value is None else round(value, 4))
        md.append("| " + " | ".join(str(x) for x in md_row) + " |")
        csv.append(",".join(_csv(x) for x in csv_row))
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def _csv(value: Any) -> str:
    text = "" if value is None else str(value)
    return f'"{text}"' if any(c in text for c in ',"') else text


def write_tables(out: Path, rows, sensitivity_rows, logreg_rows, config: ProbeConfig) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = list(dict.fromkeys(method_label(r["backbone"], r["feature_noise"], config) for r in rows))
    columns = [(d, h) for d in datasets for h in config.heads]
    index = {
        (method_label(r["backbone"], r["feature_noise"], config), r["dataset"], r["head"], r["loss"]): r
        for r in rows
    }

    def write(name: str, title: str, table: tuple[str, str]) -> None:
        atomic_write_text(out / f"table_{name}.md", f"{title}\n\n{table[0]}")
        atomic_write_text(out / f"table_{name}.csv", table[1])

    chosen = "" if config.select_seeds == 1 else f" (mean of {config.select_seeds} seeds per grid point)"
    caption = (
        f"Test accuracy (%), mean ± std over {config.seeds} seeds; hyper-parameters chosen on validation"
        f"{chosen}."
    )
    if config.init_head:
        caption += f" Heads start from {Path(config.init_head).name}."
    if config.anchor_weight > 0:
        caption += f" L2-SP anchoring to the initial weights, α = {config.anchor_weight:g}."
    if config.feature_noise != (0.0,):
        caption += (
            " σ = Gaussian noise added to the features, std σ × the training split's per-dimension std."
        )
    main_losses = [loss for loss in ("ce", "lgm") if loss in config.losses] or list(config.losses[:1])
    logreg = {(method_label(r["backbone"], r["feature_noise"], config), r["dataset"]): r for r in logreg_rows}
    main_names: dict[str, tuple[str, str]] = {}
    for b in labels:
        main_names.update({f"{b}{LOSS_LABELS[loss]}": (b, loss) for loss in main_losses})
        if logreg_rows:  # the reference row, under its backbone's rows: linear-head columns only
            main_names[f"{b}: {LOGREG_LABEL}"] = (b, "logreg")
    main_caption = caption
    if logreg_rows:
        main_caption += (
            f" {LOGREG_LABEL}: scikit-learn LogisticRegression on standardised features, C chosen on "
            "validation (deterministic, one fit)."
        )

    def lookup_in(mapping: dict[str, tuple[str, str]]):
        def lookup(name: str, d: str, h: str) -> dict[str, Any] | None:
            label, loss = mapping[name]
            if loss == "logreg":
                return logreg.get((label, d)) if h == "linear" else None
            return index.get((label, d, h, loss))

        return lookup

    main_table = _table(list(main_names), lookup_in(main_names), columns, config.heads, True)
    write("main", f"Tables 1-3 layout. {main_caption}", main_table)
    if set(config.losses) - {"ce", "lgm"}:
        names = {f"{b}{LOSS_LABELS[loss]}": (b, loss) for b in labels for loss in config.losses}
        write(
            "ablation",
            f"Table 5 layout (ablation of the penalty). {caption}",
            _table(list(names), lookup_in(names), columns, config.heads, False),
        )
    if sensitivity_rows:
        sens = {
            (
                method_label(r["backbone"], r["feature_noise"], config),
                r["dataset"],
                r["head"],
                r["gamma"],
                r["lam"],
            ): r
            for r in sensitivity_rows
        }
        names_s = {f"{b} γ={g:g} λ={lam:g}": (b, g, lam) for b in labels for g, lam in config.sensitivity}

        def lookup_s(name, d, h):
            b, g, lam = names_s[name]
            return sens.get((b, d, h, g, lam))

        write(
            "sensitivity",
            f"Table 6 layout (γ, λ sensitivity of L_gm at the selected lr/batch). {caption}",
            _table(list(names_s), lookup_s, columns, config.heads, False),
        )
    if any(r["paired"] for r in rows):
        penalised = [loss for loss in config.losses if loss != "ce"]
        names_p = {f"{b}{LOSS_LABELS[loss]} − CE": (b, loss) for b in labels for loss in penalised}
        write("paired", _paired_caption(config), _paired_table(names_p, index, columns))
    curves = feature_noise_curves(rows, logreg_rows) if len(config.feature_noise) > 1 else None
    if curves:
        md, csv = _feature_noise_table(curves)
        title = (
            "Test accuracy (%) against feature noise σ (Gaussian, std σ × the training split's "
            f"per-dimension std, drawn once per example): mean [95% t-interval] over {config.seeds} seeds; "
            "each σ with its own selection on validation."
        )
        atomic_write_text(out / "table_feature_noise.md", f"{title}\n\n{md}")
        atomic_write_text(out / "table_feature_noise.csv", csv)


def _paired_caption(config: ProbeConfig) -> str:
    p_note = (
        f"p = exact two-sided sign-flip p-value over all 2^n sign vectors (from {MIN_SEEDS_FOR_P} seeds on: "
        "with 5 it cannot go below 0.0625)."
    )
    return (
        "Paired difference to CE, test accuracy in percentage points: each penalised loss trained again at "
        "CE's selected lr and batch size (its γ scale, γ and λ chosen on validation at that lr and batch "
        "size), seed s starting from the same head weights and seeing the same batches in the same order "
        f"as CE's seed s, so that only the penalty differs. Mean [95% t-interval] over {config.seeds} "
        f"seeds; (within noise) = the interval contains 0. {p_note}"
    )


def _paired_table(
    names: dict[str, tuple[str, str]], index, columns: list[tuple[str, str]]
) -> tuple[str, str]:
    stats_cols = ("mean", "se", "ci_low", "ci_high", "p_sign_flip", "within_noise")
    md_head = ["", *[f"{d} {HEAD_LABELS[h]}" for d, h in columns]]
    csv_head = ["method", *[f"{d} {h} {s}" for d, h in columns for s in stats_cols]]
    md = ["| " + " | ".join(md_head) + " |", "|" + "---|" * len(md_head)]
    csv = [",".join(_csv(c) for c in csv_head)]
    for name, (label, loss) in names.items():
        md_row, csv_row = [name], [name]
        for d, h in columns:
            row = index.get((label, d, h, loss))
            diff = row["paired"]["vs_ce"] if row and row["paired"] else None
            md_row.append("/" if diff is None else diff["text"])
            if diff is None:
                csv_row += [""] * len(stats_cols)
            else:
                low, high = diff["ci95"] or (None, None)
                csv_row += [diff["mean"], diff["se"], low, high, diff["p_sign_flip"], diff["within_noise"]]
        md.append("| " + " | ".join(md_row) + " |")
        csv.append(",".join(_csv(x) for x in csv_row))
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def feature_noise_curves(
    rows: list[dict[str, Any]], logreg_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Test accuracy against σ per (backbone, dataset, head, loss): σ ascending, mean and t-based 95%
    interval over seeds; the logistic regression (one deterministic fit per σ) with loss `logreg`."""
    curves: dict[tuple[str, str, str, str], dict[float, dict[str, Any]]] = {}
    for row in [*rows, *logreg_rows]:
        key = (row["backbone"], row["dataset"], row["head"], row["loss"])
        curves.setdefault(key, {})[row["feature_noise"]] = row
    result = []
    for (backbone, dataset, head, loss), by_sigma in curves.items():
        sigmas = sorted(by_sigma)
        result.append(
            {
                "backbone": backbone,
                "dataset": dataset,
                "head": head,
                "loss": loss,
                "sigma": sigmas,
                "mean": [by_sigma[s]["mean"] for s in sigmas],
                "ci95": [by_sigma[s].get("ci95") for s in sigmas],
                "n": [by_sigma[s]["n"] for s in sigmas],
            }
        )
    return result


def _feature_noise_table(curves: list[dict[str, Any]]) -> tuple[str, str]:
    sigmas = sorted({s for curve in curves for s in curve["sigma"]})
    md = [
        "| backbone | dataset | head | loss | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |",
        "|" + "---|" * (4 + len(sigmas)),
    ]
    csv = ["backbone,dataset,head,loss,sigma,mean,ci_low,ci_high,n"]
    for curve in curves:
        cells = {}
        for sigma, mean, interval, n in zip(
            curve["sigma"], curve["mean"], curve["ci95"], curve["n"], strict=True
        ):
            cells[sigma] = f"{mean:.2f}" + (
                "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"
            )
            low, high = interval or ("", "")
            ids = [curve["backbone"], curve["dataset"], curve["head"], curve["loss"]]
            csv.append(",".join(_csv(x) for x in [*ids, sigma, mean, low, high, n]))
        loss = curve["loss"] if curve["loss"] != "logreg" else LOGREG_LABEL
        ids_md = [curve["backbone"], curve["dataset"], HEAD_LABELS[curve["head"]], loss]
        md.append("| " + " | ".join([*ids_md, *[cells.get(s, "/") for s in sigmas]]) + " |")
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The probe's printed summary: a line per row, its paired difference to CE under each penalised
    row, and the logistic-regression reference."""
    noisy = {r["feature_noise"] for r in summary["rows"]} != {0.0}

    def where(row: dict[str, Any]) -> str:
        sigma = f" / σ={row['feature_noise']:g}" if noisy else ""
        return f"{row['backbone']} / {row['dataset']}{sigma} / {row['head']}"

    lines = []
    for row in summary["rows"]:
        accuracy = f"{row['mean']:.2f} ± {row['std']:.2f}% (n={row['n']})"
        lines.append(f"{where(row)} / {row['loss']}: test accuracy {accuracy}")
        if row.get("paired"):
            lines.append("    " + paired_line(row))
    for row in summary.get("logreg") or []:
        lines.append(f"{where(row)} / {LOGREG_LABEL}, C={row['C']:g}: test accuracy {row['mean']:.2f}%")
    return lines


def paired_line(row: dict[str, Any]) -> str:
    """E.g. ``paired − ce at ce's lr 0.001, batch 32 (γ=0.01 absolute, λ=0.15): +0.12 [-0.30, +0.54]
    (within noise)``."""
    p = row["paired"]
    setting = f"lr {p['lr']:g}, batch {p['batch_size']}"
    penalty = f"γ={p['gamma']:g} {p['gamma_scale']}, λ={p['lam']:g}"
    return f"paired − ce at ce's {setting} ({penalty}): {p['vs_ce']['text']}"
