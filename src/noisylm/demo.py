"""`make demo`: the paper's What-Why-How on the bundled data, on CPU, with no download.

    python -m noisylm.demo --out demo_out

1. **What** — sweep `demo`: train a BPE of 2,048 ids on the bundled Shakespeare (training domain),
   encode the Python docs (second domain) with it, inject uniform noise at 1%, 5%, 20% and Gaussian
   noise at 20%, and pre-train one small GPT per corpus (bf16) with paired sampling, each as 3 paired
   replicates (the differences come with 95% intervals); then Table 1 at demo scale (probes on each
   run's frozen features, which of the 42 texts a passage comes from, CE vs CE + L_gm), and `report`
   draws Figs. 2, 3, 4, 8, the tables and Table 1 into ``OUT/sweep/report/index.html``.
2. **Why** — `theory` (when installed): Proposition 1 against the measured runs, into the same report.
3. Your data — `scan` on the 20% noisy demo corpus: does it find the noise, and what would keeping it cost?
4. **How** — `probe.demo_probe`: heads on frozen MiniLM features of the WordNet task, CE vs CE + LGM.

Running it again resumes: finished runs and steps are not repeated.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noisylm.errors import NoisyLMError


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float, where: str) -> None:
    print(f"   -> {where}  ({time.perf_counter() - start:.0f} s)", flush=True)


def _optional(module_name: str, function: str) -> Callable[..., Any] | None:
    """The function of a stage that may not be installed yet (other parts of noisylm are optional)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    return getattr(module, function, None)


def run_demo(out_dir: str | Path, overrides: list[str] | None = None, extras: bool = True) -> Path:
    """Run every demo step into ``out_dir``; return the report folder."""
    from noisylm.experiments.config import load_sweep_config
    from noisylm.experiments.launch import sweep
    from noisylm.experiments.reporting import report
    from noisylm.runtime import cpu_flags

    out = Path(out_dir)
    sweep_dir = out / "sweep"
    failures: list[str] = []

    config = load_sweep_config("demo", overrides)
    note = dtype_note(config.train.get("dtype", "auto"), cpu_flags())
    if note:
        print(f"note: {note}", flush=True)
    start = _step(
        "What: sweep `demo` (prepare the bundled corpora, inject noise, train 5 runs x 3 paired replicates,"
        " then probe their features: Table 1)"
    )
    summary = sweep(config, sweep_dir)
    _done(start, f"{sweep_dir / 'summary.md'}")
    if summary["counts"].get("failed"):
        failures.append("sweep: some runs failed (see summary.md)")
    print((sweep_dir / "summary.md").read_text("utf-8"))
    if "downstream" in summary:  # the sweep config's [downstream] stage ran after training
        print((sweep_dir / "downstream" / "table1.md").read_text("utf-8"))
        print((sweep_dir / "downstream" / "differences.md").read_text("utf-8"))

    start = _step("What: report (Figs. 2, 3, 4, 8 and the per-run table)")
    report_dir = report(sweep_dir)
    _done(start, f"{report_dir / 'index.html'}")
    for line in headline(report_dir / "runs" / "runs.csv"):
        print(f"   {line}")

    if extras:
        theory = _optional("noisylm.theory", "theory")
        start = _step("Why: Proposition 1 against the measured runs (`noisylm theory`)")
        failures += _run_optional("theory", theory, lambda: theory(sweep_dir), start)

        scan = _optional("noisylm.scan", "scan")
        noisy = sweep_dir / "data" / "uniform-a0.2"
        start = _step(f"Your data: `noisylm scan` on the 20% noisy demo corpus ({noisy})")
        failures += _run_optional("scan", scan, lambda: scan(noisy, out=out / "scan", overwrite=True), start)

        demo_probe = _optional("noisylm.probing.protocol", "demo_probe")
        start = _step("How: probe heads on frozen MiniLM features, CE vs CE + LGM")
        failures += _run_optional("probe", demo_probe, lambda: demo_probe(out / "probe"), start)

    print(f"\nThe report: {report_dir / 'index.html'}  (open it in a browser; it reads offline)")
    if failures:
        raise NoisyLMError("demo steps failed: " + "; ".join(failures))
    return report_dir


def dtype_note(dtype: str, flags: frozenset[str]) -> str | None:
    """A line for CPUs where the demo's pinned bfloat16 trains slower than float32 (where `auto` would not
    pick it: no AMX, BENCHMARKS.md), with the way out; None where bf16 is the fast choice or not used."""
    import torch

    from noisylm.runtime import auto_cpu_dtype

    if dtype != "bfloat16" or auto_cpu_dtype(flags)[0] == torch.bfloat16:
        return None
    return (
        "this CPU has no AMX, where the demo's bfloat16 (pinned, so that its dtype does not depend on the"
        " CPU) trains slower than float32; `--set train.dtype=float32` is faster here, with numbers that"
        " differ slightly from the README's"
    )


def headline(runs_csv: Path) -> list[str]:
    """One line per noisy grid point: the paper's What, in numbers from the report's per-run table
    (the mean over the point's replicates; their intervals are in the paired-differences table)."""
    import csv

    points: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in csv.DictReader(runs_csv.read_text("utf-8").splitlines()):
        if row["kind"] != "clean" and row["rel_increase"]:
            points.setdefault((row["kind"], row["alpha"]), []).append(row)
    lines = []
    for (kind, alpha), rows in points.items():
        rel = sum(float(r["rel_increase"]) for r in rows) / len(rows)
        per_alpha = sum(float(r["rel_increase_per_alpha"]) for r in rows) / len(rows)
        line = f"{kind} noise at alpha = {float(alpha):g}: clean loss {rel:+.2%} ({per_alpha:.2f} x alpha)"
        same_tokens = [  # relative to the clean run of the same replicate
            float(r["abs_increase_equal_clean_tokens"])
            / (float(r["clean_val_loss"]) - float(r["abs_increase"]))
            for r in rows
            if r["abs_increase_equal_clean_tokens"] and r["clean_val_loss"]
        ]
        if same_tokens:
            line += f"; after the same clean tokens {sum(same_tokens) / len(same_tokens):+.2%}"
        if len(rows) > 1:
            line += f" (mean of {len(rows)} replicates)"
        lines.append(line)
    return lines


def _run_optional(name: str, function: Callable | None, call: Callable[[], Any], start: float) -> list[str]:
    if function is None:
        print(f"   skipped: noisylm.{name} is not installed in this version", flush=True)
        return []
    try:
        result = call()
    except NoisyLMError as exc:
        print(f"   {name} failed: {exc}", file=sys.stderr, flush=True)
        return [f"{name}: {exc}"]
    _done(start, _where(result))
    return []


def _where(result: Any) -> str:
    if isinstance(result, dict):
        for key in ("out", "path", "report", "index"):
            if key in result:
                return str(result[key])
        return "done"
    return str(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noisylm.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="demo_out", help="output folder (re-running resumes)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the demo sweep, e.g. train.max_iters=200",
    )
    parser.add_argument("--no-extras", action="store_true", help="only the sweep and its report")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        run_demo(args.out, args.overrides, extras=not args.no_extras)
    except NoisyLMError as exc:
        print(f"noisylm demo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
