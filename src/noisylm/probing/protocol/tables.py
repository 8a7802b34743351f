"""Tables (Markdown + CSV) shaped like the paper's: Tables 1-3 (main), 5 (ablation), 6 (sensitivity)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from noisylm.artifacts import atomic_write_text
from noisylm.probing.protocol.config import HEAD_LABELS, LOSS_LABELS, ProbeConfig


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return row["backbone"], row["dataset"], row["head"], row["loss"]


def _cell(row: dict[str, Any] | None) -> str:
    return "/" if row is None else f"{row['mean']:.2f} ± {row['std']:.2f}"


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
        csv_row = [name, *[x for c in cells for x in (("", "") if c is None else (c["mean"], c["std"]))]]
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
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',"') else text


def write_tables(out: Path, rows, sensitivity_rows, config: ProbeConfig) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    columns = [(d, h) for d in datasets for h in config.heads]
    index = {_key(r): r for r in rows}

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
    main_losses = [loss for loss in ("ce", "lgm") if loss in config.losses] or list(config.losses[:1])
    names = {f"{b}{LOSS_LABELS[loss]}": (b, loss) for b in backbones for loss in main_losses}
    lookup = lambda name, d, h: index.get((*names[name][:1], d, h, names[name][1]))  # noqa: E731
    write("main", f"Tables 1-3 layout. {caption}", _table(list(names), lookup, columns, config.heads, True))
    if set(config.losses) - {"ce", "lgm"}:
        names = {f"{b}{LOSS_LABELS[loss]}": (b, loss) for b in backbones for loss in config.losses}
        write(
            "ablation",
            f"Table 5 layout (ablation of the penalty). {caption}",
            _table(list(names), lookup, columns, config.heads, False),
        )
    if sensitivity_rows:
        sens = {(r["backbone"], r["dataset"], r["head"], r["gamma"], r["lam"]): r for r in sensitivity_rows}
        names_s = {f"{b} γ={g:g} λ={lam:g}": (b, g, lam) for b in backbones for g, lam in config.sensitivity}

        def lookup_s(name, d, h):
            b, g, lam = names_s[name]
            return sens.get((b, d, h, g, lam))

        write(
            "sensitivity",
            f"Table 6 layout (γ, λ sensitivity of L_gm at the selected lr/batch). {caption}",
            _table(list(names_s), lookup_s, columns, config.heads, False),
        )
