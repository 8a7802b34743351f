"""`noisylm prepare | merge | inject | stats | verify`: text → token shards → noisy shards."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from noisylm.cli import HelpFormatter
from noisylm.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize text files (or a bundled corpus) into nanoGPT train.bin/val.bin shards",
        description="Tokenize text into a shard set: train.bin and val.bin (uint16 token ids, documents\n"
        "separated by the end-of-text id, as nanoGPT reads them) and manifest.json (tokenizer, counts,\n"
        "sha256, size and mtime of every file, sources, seed, provenance).\n\n"
        "Inputs: text files, folders of them (recursive), .gz, JSONL (one document per line, text in\n"
        "--text-field). One document per file unless --doc-separator splits files further.\n"
        "Validation: --val-fraction of the documents, chosen evenly from a seeded offset.",
        epilog="examples:\n"
        "  noisylm prepare --corpus shakespeare --tokenizer bytes --out data/shakespeare\n"
        "  noisylm prepare --corpus shakespeare --tokenizer bpe:2048 --out data/shakespeare-bpe\n"
        "  noisylm prepare --corpus python-docs --tokenizer-from data/shakespeare-bpe --out data/docs-bpe\n"
        "  noisylm prepare owt/*.jsonl.gz --out data/owt --num-proc 8\n"
        "  noisylm prepare big.txt --doc-separator '<|endoftext|>' --out data/big\n"
        "  noisylm prepare owt/ --num-shards 4 --shard-index 0 --out data/owt-0   # then `noisylm merge`",
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="text/JSONL files or folders (.gz allowed)")
    p.add_argument("--corpus", help="a bundled corpus instead of inputs: shakespeare | python-docs")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument(
        "--tokenizer",
        default="gpt2",
        help="gpt2 (50257 ids) | bytes (257 ids) | bpe:N (a byte-level BPE of N ids trained on this "
        "corpus's training documents, stored as tokenizer.json in the shard set)",
    )
    p.add_argument(
        "--tokenizer-from",
        metavar="DIR",
        help="reuse the trained tokenizer of the shard set DIR, so that a second corpus shares its ids",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents for validation")
    p.add_argument("--seed", type=int, default=0, help="seeds the validation assignment")
    p.add_argument("--num-proc", type=int, default=1, help="tokenizer processes")
    p.add_argument("--doc-separator", help="split text files into documents at this literal string")
    p.add_argument("--text-field", default="text", help="JSONL field that holds the text")
    p.add_argument("--max-documents", type=int, help="stop after this many documents")
    p.add_argument("--num-shards", type=int, default=1, help="split documents round-robin into N shard sets")
    p.add_argument("--shard-index", type=int, default=0, help="which of the --num-shards sets to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_prepare)

    p = subparsers.add_parser(
        "merge",
        help="concatenate clean shard sets made with the same tokenizer (e.g. --num-shards parts)",
        description="Concatenate the train and val splits of clean shard sets, in the order given.",
        epilog="example:\n  noisylm merge data/owt-0 data/owt-1 data/owt-2 data/owt-3 --out data/owt",
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="shard directories")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=_merge)

    p = subparsers.add_parser(
        "inject",
        help="add noise to a shard set's training split at proportion alpha",
        description="Write a copy of a shard set whose train.bin holds noise at proportion\n"
        "alpha = noise tokens / all training tokens (the paper's Eq. 1); val.bin is copied untouched.\n"
        "Also writes noise.bin (the noise alone) and records kind, parameters, seed, alpha and the\n"
        "noise spans in manifest.json. Same inputs and seed give byte-identical files.\n\n"
        "kinds (ids in [0, V), V = ordinary tokens: 50256 for gpt2, 256 for bytes):\n"
        "  uniform    i.i.d. uniform (the paper's random noise)\n"
        "  boosted    uniform + ~100 boosted ids, mostly below 1000 (Fig. 8b); params num_boosted,\n"
        "             low_ids, low_fraction, boost_min, boost_max\n"
        "  gaussian   N(25128, 500) for gpt2, N(V/2, V/100) otherwise, rounded, clipped; params mean, std\n"
        "  mojibake   real text mis-decoded / random bytes decoded leniently, then tokenized; params\n"
        "             text (corpus name or path), variants (list of 'utf8->cp037'-style pairs)\n"
        "  histogram  from a token histogram (--histogram FILE: .npy counts, or .json list / {id: count})\n"
        "  corpus     the train tokens of another prepared shard set (--source DIR, same tokenizer)\n\n"
        "placement: append (after the clean data, as in the paper) or interleave (as documents with\n"
        "log-normal lengths, median --doc-median, shape --doc-sigma, at random document boundaries).",
        epilog="examples:\n"
        "  noisylm inject data/shakespeare --alpha 0.2 --kind uniform --out data/shk-uniform-0.2\n"
        "  noisylm inject data/shakespeare --alpha 0.05 --kind gaussian --param std=500 --out data/shk-g\n"
        "  noisylm inject data/shakespeare --alpha 0.5 --kind corpus --source data/pydocs --out data/mix",
        formatter_class=HelpFormatter,
    )
    p.add_argument("src", help="clean shard directory (from `noisylm prepare`)")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--alpha", type=float, required=True, help="noise proportion in [0, 1)")
    p.add_argument("--kind", default="uniform", help="uniform|boosted|gaussian|mojibake|histogram|corpus")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise and its placement")
    p.add_argument("--placement", default="append", help="append | interleave")
    p.add_argument("--doc-median", type=float, default=512.0, help="interleave: median noise doc length")
    p.add_argument("--doc-sigma", type=float, default=1.0, help="interleave: log-normal shape of lengths")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the noise kind (VALUE parsed as JSON when it can be); repeatable",
    )
    p.add_argument("--histogram", help="histogram file for --kind histogram")
    p.add_argument("--source", help="shard directory whose train tokens are the noise, for --kind corpus")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_inject)

    p = subparsers.add_parser(
        "stats",
        help="token counts and the token prior of clean data and noise (Fig. 8)",
        description="Count tokens and documents per split and plot the prior distribution of token ids\n"
        "of the clean training data, the noise and the validation split (the paper's Fig. 8).\n"
        "Writes token_priors.png, stats.md (table) and stats.json to --out (default DIR/stats).",
        epilog="example:\n  noisylm stats data/shk-uniform-0.2",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", help="shard directory")
    p.add_argument("--out", help="output folder (default: DIR/stats; replaced if it exists)")
    p.set_defaults(handler=_stats)

    p = subparsers.add_parser(
        "verify",
        help="recompute hashes, check token ranges and manifest consistency",
        description="Check a shard set: sizes and sha256 of every file against the manifest, token ids\n"
        "below the vocabulary size, document counts, and for noisy sets the spans, noise.bin and alpha.\n"
        "Prints every problem; exit status 1 if there is any. (Every command that reads a split checks\n"
        "its sha256 too, but trusts a file whose size and mtime still match the manifest; verify always\n"
        "re-hashes.)",
        epilog="example:\n  noisylm verify data/shk-uniform-0.2",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", help="shard directory")
    p.set_defaults(handler=_verify)


def _prepare(args: argparse.Namespace) -> int:
    from noisylm.data.preparation import prepare

    shards = prepare(
        args.inputs,
        args.out,
        corpus=args.corpus,
        overwrite=args.overwrite,
        progress=False if args.quiet else None,
        tokenizer=args.tokenizer,
        tokenizer_from=args.tokenizer_from,
        val_fraction=args.val_fraction,
        seed=args.seed,
        num_proc=args.num_proc,
        doc_separator=_unescape(args.doc_separator),
        text_field=args.text_field,
        max_documents=args.max_documents,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
    )
    print(_summary(shards))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from noisylm.data.preparation import merge

    print(_summary(merge(args.inputs, args.out, overwrite=args.overwrite)))
    return 0


def _inject(args: argparse.Namespace) -> int:
    from noisylm.data.injection import inject

    params = _parse_params(args.param)
    if args.histogram:
        params["histogram"] = args.histogram
    if args.source:
        params["source"] = args.source
    shards = inject(
        args.src,
        args.out,
        alpha=args.alpha,
        kind=args.kind,
        seed=args.seed,
        placement=args.placement,
        params=params,
        doc_median=args.doc_median,
        doc_sigma=args.doc_sigma,
        overwrite=args.overwrite,
        progress=False if args.quiet else None,
    )
    noise = shards.noise or {}
    print(
        f"{_summary(shards)}\n{noise.get('kind')} noise, {noise.get('placement')}: "
        f"{noise.get('noise_tokens'):,} tokens in {len(shards.noise_spans())} span(s), "
        f"alpha requested {noise.get('alpha_requested')}, achieved {noise.get('alpha_achieved'):.6f}"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    from noisylm.data.statistics import stats

    result = stats(args.dir, args.out)
    print(result["table"])
    print(f"wrote {result['figure']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from noisylm.data.shards import verify

    problems = verify(args.dir)
    for problem in problems:
        print(f"noisylm verify: error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.dir}: OK")
    return 0


def _summary(shards: Any) -> str:
    counts = ", ".join(f"{s.name} {s.tokens:,} tokens" for s in shards.splits.values())
    return f"wrote {shards.path} ({shards.tokenizer}): {counts}"


def _unescape(text: str | None) -> str | None:
    """Let shells pass '\\n', '\\t', '\\r' escapes (e.g. '\\n\\n\\n' for two blank lines)."""
    if text is None:
        return None
    return text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r} must look like KEY=VALUE, e.g. --param std=500")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params
