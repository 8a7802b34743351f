"""`noisylm scan`: find random-noise spans in a shard set, estimate α̂, predict their cost, filter."""

from __future__ import annotations

import argparse
from typing import Any

from noisylm.cli import HelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scan",
        help="estimate the random noise in a shard set, predict its cost, optionally filter it out",
        description="Answer 'do I need to filter my data?' for a prepared shard set.\n\n"
        "Finds spans that look like random noise with model-free detectors (numpy over memmaps, in\n"
        "chunks): per-window surprisal under the corpus's own unigram distribution, distinct-token\n"
        "ratio and token-id statistics seed a two-component unigram mixture (clean vs noise,\n"
        "re-estimated by hard EM); candidate spans are re-checked against a bigram model of the clean\n"
        "text (random noise has no sequential structure) and cut at token level. With --model, the\n"
        "per-token loss of a trained checkpoint is the score instead (random noise sits near log V).\n\n"
        "Writes OUT/scan.json (α̂, every flagged span, settings, feature statistics, the comparison\n"
        "with the true spans for sets made by `noisylm inject`, the Prop. 1 prediction), scan.md and\n"
        "scan.png (histogram of window scores with the threshold). --filter writes a copy of the shard\n"
        "set without the flagged spans; its manifest records every removed span and the settings.",
        epilog="examples:\n"
        "  noisylm scan data/shk-uniform-0.2                      # report in data/shk-uniform-0.2-scan\n"
        "  noisylm scan data/owt --out scans/owt --filter data/owt-filtered\n"
        "  noisylm scan data/owt --model runs/clean/checkpoints/ckpt-0005000\n"
        "  noisylm scan data/crawl --reference data/wikipedia --reference-split val\n"
        "  noisylm scan data/owt --detector unigram --window 128",
        formatter_class=HelpFormatter,
    )
    p.add_argument("shard_dir", help="shard directory made by `noisylm prepare` (or `inject`)")
    p.add_argument("--out", help="report directory (default: <shard_dir>-scan next to it)")
    p.add_argument("--filter", dest="filter_out", metavar="OUT", help="also write a filtered shard set here")
    p.add_argument("--model", metavar="CKPT", help="score with this checkpoint's per-token loss")
    p.add_argument("--detector", choices=("mixture", "unigram", "model"), default="mixture", help="detector")
    p.add_argument("--window", type=int, default=64, help="tokens per scoring window")
    p.add_argument("--stride", type=int, default=16, help="window step in tokens (divides --window)")
    p.add_argument("--threshold", type=float, help="window-score threshold (default: automatic)")
    p.add_argument("--min-span", type=int, default=32, help="shortest span kept, in tokens")
    p.add_argument("--no-bigram", action="store_true", help="skip the bigram re-check of candidate spans")
    p.add_argument("--split", default="train", help="split to scan")
    p.add_argument(
        "--reference",
        metavar="DIR",
        help="a shard set of trusted clean text (same tokenizer): its unigram statistics seed the detector, "
        "which finds heavy structured noise (e.g. 20%% mojibake)",
    )
    p.add_argument("--reference-split", default="train", help="split of --reference to use")
    p.add_argument("--k", type=float, default=1000.0, help="Prop. 1's k for the headline prediction")
    p.add_argument("--device", default="cpu", help="torch device for --model")
    p.add_argument("--overwrite", action="store_true", help="replace existing --out / --filter outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_scan)


def _scan(args: argparse.Namespace) -> int:
    from noisylm.scan import ScanConfig, scan

    config = ScanConfig(
        detector="model" if args.model else args.detector,
        window=args.window,
        stride=args.stride,
        threshold=args.threshold,
        min_span=args.min_span,
        bigram=not args.no_bigram,
        split=args.split,
        reference=args.reference,
        reference_split=args.reference_split,
        model=args.model,
        device=args.device,
    )
    report: dict[str, Any] = scan(
        args.shard_dir,
        args.out,
        config=config,
        filter_out=args.filter_out,
        overwrite=args.overwrite,
        k=args.k,
        progress=not args.quiet,
    )
    print(report["verdict"])
    print(
        f"alpha_hat={report['alpha_hat']:.4%} flagged={report['flagged_tokens']:,} of {report['tokens']:,} "
        f"tokens in {report['num_spans']:,} spans ({report['seconds']:.1f} s)"
    )
    truth = report.get("truth")
    if truth:
        print(
            f"against the true spans: alpha={truth['alpha']:.4%} precision={truth['precision']:.4f} "
            f"recall={truth['recall']:.4f} F1={truth['f1']:.4f}"
        )
    if report.get("filter"):
        print(f"filtered shard set: {report['filter']['out']}")
    print(f"report: {report['out']}/scan.md (scan.json, scan.png)")
    return 0
