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
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from noisylm.data.preparation import prepare
from noisylm.scan.pipeline import (
    VALIDATION_ALPHAS,
    VALIDATION_KINDS,
    VALIDATION_PLACEMENTS,
    ScanConfig,
    validate,
    validation_markdown,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "scan.md"
BEGIN, END = "<!-- validation-table -->", "<!-- /validation-table -->"


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
