"""Validate `noisylm scan` on known truth and write the table into docs/scan.md.

For both tokenizers (bytes, gpt2) the bundled Shakespeare corpus is prepared, then for every noise kind
(uniform, boosted, gaussian, mojibake), placement (append, interleave) and α (1%, 5%, 20%) `noisylm inject`
makes a noisy copy whose manifest holds the true spans, and `scan` is scored against them: precision,
recall and F1 of flagged tokens, α̂ against α, recall on true spans of at least 64 tokens. The clean
corpus itself is scanned too (its α̂ is the false-positive rate). Mojibake is scanned a second time with
``--reference`` = the bundled Python documentation (trusted clean text of another domain). Everything is
written to a temporary directory and deleted afterwards.

    python benchmarks/validate_scan.py               # full grid, rewrites the table in docs/scan.md
    python benchmarks/validate_scan.py --no-write    # print only

`validate(clean_dir, work_dir, ...)` (one tokenizer, one clean corpus) and `validation_markdown(rows)` are
importable for a smaller grid; tests/test_scan_validation.py runs one case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.data.injection import inject
from noisylm.data.preparation import prepare
from noisylm.data.shards import ShardSet
from noisylm.scan import ScanConfig, scan
from noisylm.scan.truth import span_metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "scan.md"
BEGIN, END = "<!-- validation-table -->", "<!-- /validation-table -->"

VALIDATION_KINDS = ("uniform", "boosted", "gaussian", "mojibake")
VALIDATION_PLACEMENTS = ("append", "interleave")
VALIDATION_ALPHAS = (0.01, 0.05, 0.2)
LONG_SPAN = 64  # the targets are for noise spans of at least this many tokens


def validate(
    clean_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    kinds: tuple[str, ...] = VALIDATION_KINDS,
    placements: tuple[str, ...] = VALIDATION_PLACEMENTS,
    alphas: tuple[float, ...] = VALIDATION_ALPHAS,
    seed: int = 0,
    config: ScanConfig | None = None,
    keep: bool = False,
) -> list[dict[str, Any]]:
    """Scan `noisylm inject` corpora made from ``clean_dir`` (known truth) and return one row per
    (kind, placement, α): precision, recall, F1 of flagged tokens, α̂ vs α, recall on true spans of at
    least 64 tokens. The first row is the clean corpus itself (its α̂ is the false-positive rate).
    Corpora are written under ``work_dir`` and deleted after scanning unless ``keep``."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    config = config or ScanConfig()
    clean = ShardSet.open(clean_dir)
    report = scan(clean.path, work / "clean-scan", config=config, overwrite=True, progress=False)
    rows = [
        {
            "tokenizer": clean.tokenizer,
            "kind": "none (clean)" if config.reference is None else "none (clean) + reference",
            "placement": "-",
            "alpha": 0.0,
            "alpha_hat": report["alpha_hat"],
            "seconds": report["seconds"],
            "tokens": report["tokens"],
        }
    ]
    for kind in kinds:
        for placement in placements:
            for alpha in alphas:
                name = f"{kind}-{placement}-{alpha:g}"
                noisy = work / name
                inject(clean.path, noisy, alpha=alpha, kind=kind, placement=placement, seed=seed,
                       overwrite=True, progress=False)  # fmt: skip
                report = scan(noisy, work / f"{name}-scan", config=config, overwrite=True, progress=False)
                truth = dict(report["truth"])
                true_spans = ShardSet.open(noisy).noise_spans()
                long_spans = true_spans[true_spans[:, 1] >= LONG_SPAN]
                spans = np.asarray(report["spans"], dtype=np.int64).reshape(-1, 2)
                long_metrics = span_metrics(spans, long_spans, report["tokens"])
                rows.append(
                    {
                        "tokenizer": clean.tokenizer,
                        "kind": kind if config.reference is None else f"{kind} + reference",
                        "placement": placement,
                        "alpha": truth["alpha"],
                        "alpha_hat": truth["alpha_hat"],
                        "alpha_rel_error": truth["alpha_rel_error"],
                        "precision": truth["precision"],
                        "recall": truth["recall"],
                        "f1": truth["f1"],
                        "recall_long": long_metrics["recall"],
                        "true_spans": len(true_spans),
                        "short_span_tokens": int(true_spans[true_spans[:, 1] < LONG_SPAN, 1].sum()),
                        "seconds": report["seconds"],
                        "tokens": report["tokens"],
                    }
                )
                if not keep:
                    shutil.rmtree(noisy, ignore_errors=True)
                    shutil.rmtree(work / f"{name}-scan", ignore_errors=True)
    if not keep:
        shutil.rmtree(work / "clean-scan", ignore_errors=True)
    return rows


def validation_markdown(rows: list[dict[str, Any]]) -> str:
    """The validation rows as a Markdown table (targets: F1 >= 0.95, |α̂ − α|/α <= 0.10)."""
    lines = [
        "| tokenizer | kind | placement | α | α̂ | \\|α̂−α\\|/α | precision | recall | F1 "
        "| recall (spans ≥ 64) | meets targets | scan s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "f1" not in r:
            lines.append(
                f"| {r['tokenizer']} | {r['kind']} | - | 0 | {r['alpha_hat']:.4%} | - | - | - | - | - | "
                f"false positives | {r['seconds']:.1f} |"
            )
            continue
        ok = r["f1"] >= 0.95 and r["alpha_rel_error"] <= 0.10
        lines.append(
            f"| {r['tokenizer']} | {r['kind']} | {r['placement']} | {r['alpha']:.2%} | "
            f"{r['alpha_hat']:.2%} | {r['alpha_rel_error']:.3f} | {r['precision']:.4f} | "
            f"{r['recall']:.4f} | {r['f1']:.4f} | "
            f"{r['recall_long']:.4f} | {'yes' if ok else '**no**'} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizers", nargs="+", default=["bytes", "gpt2"])
    parser.add_argument("--kinds", nargs="+", default=list(VALIDATION_KINDS))
    parser.add_argument("--placements", nargs="+", default=list(VALIDATION_PLACEMENTS))
    parser.add_argument("--alphas", nargs="+", type=float, default=list(VALIDATION_ALPHAS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/scan.md alone")
    parser.add_argument(
        "--reference-kinds",
        nargs="*",
        default=["mojibake"],
        help="kinds scanned again with --reference = the bundled Python docs (another domain)",
    )
    args = parser.parse_args()

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="validate-scan-") as tmp:
        for tokenizer in args.tokenizers:
            clean = Path(tmp) / f"shakespeare-{tokenizer}"
            prepare(None, clean, corpus="shakespeare", tokenizer=tokenizer, seed=0, progress=False)
            rows += validate(
                clean,
                Path(tmp) / f"work-{tokenizer}",
                kinds=tuple(args.kinds),
                placements=tuple(args.placements),
                alphas=tuple(args.alphas),
                seed=args.seed,
            )
            if args.reference_kinds:
                reference = Path(tmp) / f"python-docs-{tokenizer}"
                prepare(None, reference, corpus="python-docs", tokenizer=tokenizer, seed=0, progress=False)
                rows += validate(
                    clean,
                    Path(tmp) / f"work-{tokenizer}-ref",
                    kinds=tuple(args.reference_kinds),
                    placements=tuple(args.placements),
                    alphas=tuple(args.alphas),
                    seed=args.seed,
                    config=ScanConfig(reference=str(reference)),
                )
            print(f"{tokenizer}: done after {time.perf_counter() - started:.0f} s", flush=True)
    table = validation_markdown(rows)
    print(table)
    print(json.dumps(rows, indent=1))
    if not args.no_write:
        text = DOC.read_text(encoding="utf-8")
        block = f"{BEGIN}\n{table}{END}"
        text, count = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        if count != 1:
            raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block to replace")
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote the table into {DOC}")


if __name__ == "__main__":
    main()
