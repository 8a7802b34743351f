"""A sweep's ``summary.json`` and ``summary.md``: the status and final numbers of every run, rewritten
after each run from the sweep directory alone (read through `SweepDir`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from noisylm.artifacts import atomic_write_json, atomic_write_text, provenance
from noisylm.experiments.plan import RUN_STATUSES, SWEEP_FORMAT
from noisylm.experiments.replicates import differences_markdown, replicate_differences
from noisylm.experiments.rundir import SweepDir


def write_summary(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re)write ``summary.json`` and ``summary.md`` from ``sweep.json`` and the run directories."""
    out = Path(sweep_dir)
    sweep = SweepDir.open(out)
    rows = []
    for run in sweep.runs:
        status = run.status
        last = run.final_eval()
        row = {
            "name": run.name,
            "replicate": run.replicate,
            "kind": run.kind,
            "alpha": run.alpha,
            "alpha_achieved": run.alpha_achieved,
            "status": status,
            "iter": last["iter"] if last else None,
            "tokens": last["tokens"] if last else None,
            "clean_tokens": last.get("clean_tokens") if last else None,
            "eval": last["eval"] if last else {},
            "run_dir": run.plan.run_dir,
        }
        if status == "failed":
            row["error"] = run.error
        rows.append(row)
    # Each run against the clean run of its own replicate (the same seed and data seed: a paired run).
    cleans = {r["replicate"]: r for r in rows if r["kind"] is None} if sweep.clean_run else {}
    for row in rows:
        clean = cleans.get(row["replicate"])
        clean_val = (clean or {}).get("eval", {}).get("val")
        val = row["eval"].get("val")
        comparable = clean_val is not None and val is not None and row["iter"] == (clean or {}).get("iter")
        row["val_increase"] = val - clean_val if comparable else None
        row["val_increase_rel"] = (val - clean_val) / clean_val if comparable else None
        row["val_increase_rel_per_alpha"] = (
            row["val_increase_rel"] / row["alpha"] if comparable and row["alpha"] > 0 else None
        )
    summary = {
        "format": SWEEP_FORMAT,
        "name": sweep.name,
        "clean_run": sweep.clean_run,
        "counts": {s: sum(r["status"] == s for r in rows) for s in RUN_STATUSES},
        "runs": rows,
        "replicates": sweep.replicates,
        "differences": replicate_differences(sweep),
        "provenance": provenance({"sweep_dir": str(out)}, sweep.seed),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: status and final numbers of every run."""
    domains = sorted({k for r in summary["runs"] for k in r["eval"]} - {"val", "noise"})
    head = [
        "run",
        "kind",
        "α",
        "status",
        "iter",
        "clean val loss",
        "Δ vs clean",
        "Δ rel",
        "Δ rel / α",
        "noise loss",
    ]
    head += [f"{d} loss" for d in domains]
    lines = [
        f"# Sweep `{summary['name']}`",
        "",
        ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n) or "no runs",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary["runs"]:
        cells = [
            r["name"],
            r["kind"] or "clean",
            f"{r['alpha']:g}",
            r["status"],
            _fmt(r["iter"], "d"),
            _fmt(r["eval"].get("val"), ".4f"),
            _fmt(r["val_increase"], "+.4f"),
            _fmt(r["val_increase_rel"], "+.2%"),
            _fmt(r["val_increase_rel_per_alpha"], "+.3f"),
            _fmt(r["eval"].get("noise"), ".4f"),
        ] + [_fmt(r["eval"].get(d), ".4f") for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    replicates = summary.get("replicates", 1)
    lines += [
        "",
        f"## Paired differences over replicates ({replicates} replicate{'s' if replicates > 1 else ''})",
        "",
        "Each noisy run against the clean run of the same replicate (same seed and data seed); the mean "
        "over replicates with its 95% t interval"
        + (" (1 replicate: no interval; set `replicates` to 3 or more)" if replicates == 1 else "")
        + ".",
        "",
        *differences_markdown(summary.get("differences", [])),
    ]
    failed = [r for r in summary["runs"] if r.get("error")]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- `{r['name']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)
