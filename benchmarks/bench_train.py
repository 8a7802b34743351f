"""Training throughput: noisylm's trainer against nanoGPT's train.py, same config, same data, same machine.

    python benchmarks/bench_train.py --nanogpt-dir /path/to/nanoGPT [--iters 30] [--warmup 5]

Config (both): n_layer 4, n_head 4, n_embd 256, block 256, batch 8, no gradient accumulation, GPT-2
vocabulary (50257, padded to 50304), bias, no dropout, lr 6e-4 with 5 warm-up steps, CPU, no compile.
Data: the bundled Shakespeare corpus tokenised with GPT-2 BPE, written once as train.bin/val.bin and
read by both (nanoGPT's format). nanoGPT is run unchanged from ``--nanogpt-dir`` (not vendored).

Each configuration runs in its own process, in turn, ``--repeats`` times; reported per row: the median
tokens/s over the iterations after ``--warmup`` (each process's per-iteration wall time), peak RSS of
the process (``wait4``), and the training loss averaged over the last 5 iterations (windows are
random in both, so the losses agree within sampling noise, not bitwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import nanogpt_train, noisylm_train, prepare_data, subprocess_env

COMMON = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, batch_size=8)


def bench_nanogpt(nanogpt_dir: Path, work: Path, iters: int, env: dict[str, str]) -> dict:
    settings = {
        **COMMON,
        "device": "cpu",
        "compile": False,
        "dtype": "float32",
        "gradient_accumulation_steps": 1,
        "max_iters": iters,
        "lr_decay_iters": iters,
        "warmup_iters": 5,
        "learning_rate": 6e-4,
        "min_lr": 6e-5,
        "eval_interval": 10**9,
        "eval_iters": 1,
        "log_interval": 1,
        "always_save_checkpoint": False,
        "bias": True,
        "dropout": 0.0,
    }
    tokens = COMMON["batch_size"] * COMMON["block_size"]
    return nanogpt_train(nanogpt_dir, work, settings, tokens, env)


VARIANTS = {  # noisylm settings to try; the fastest is reported as its best CPU setting
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "fp32+compile": {"dtype": "float32", "compile": "true"},
}


def bench_noisylm(data: Path, work: Path, iters: int, variant: dict, env: dict[str, str], tag: str) -> dict:
    out = work / f"run-{tag}"
    args = {
        **COMMON,
        "model": "small",
        "bias": "true",
        "dropout": 0.0,
        "grad_accum": 1,
        "max_iters": iters,
        "lr_decay_iters": iters,
        "warmup_iters": 5,
        "learning_rate": 6e-4,
        "min_lr": 6e-5,
        "sampler": "uniform",
        "eval_interval": 10**9,
        "eval_at_start": "false",
        "eval_iters": 1,
        "checkpoint_interval": 0,
        "tensorboard": "false",
        "progress": "false",
        "device": "cpu",
        **variant,
    }
    return noisylm_train(data, out, args, env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nanogpt-dir", type=Path, required=True, help="a local clone of karpathy/nanoGPT")
    parser.add_argument("--iters", type=int, default=30, help="training iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="iterations left out of the median")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, interleaved")
    parser.add_argument("--plays", type=int, default=8, help="Shakespeare plays in the data")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="noisylm settings to run",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (args.nanogpt_dir / "train.py").is_file():
        raise SystemExit(
            f"{args.nanogpt_dir} has no train.py; pass --nanogpt-dir pointing to a nanoGPT clone"
        )

    env = subprocess_env()
    results: dict[str, list[dict]] = {"nanoGPT fp32": [], **{f"noisylm {v}": [] for v in args.variants}}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        data = prepare_data(work, args.plays)
        for repeat in range(args.repeats):
            started = time.time()
            results["nanoGPT fp32"].append(bench_nanogpt(args.nanogpt_dir, work, args.iters, env))
            for i, name in enumerate(args.variants):
                result = bench_noisylm(data, work, args.iters, VARIANTS[name], env, f"v{i}")
                results[f"noisylm {name}"].append(result)
            print(f"repeat {repeat + 1}/{args.repeats} took {time.time() - started:.0f} s", file=sys.stderr)

    def summarise(runs: list[dict]) -> dict:
        speeds = [s for r in runs for s in r["tokens_per_s"][args.warmup :]]
        return {
            "tokens_per_s": statistics.median(speeds),
            "per_repeat": [statistics.median(r["tokens_per_s"][args.warmup :]) for r in runs],
            "peak_rss_mib": max(r["rss"] for r in runs) / 2**20,
            "final_loss": statistics.mean(loss for r in runs for loss in r["losses"][-5:]),
        }

    table = {name: summarise(runs) for name, runs in results.items()}
    base = table["nanoGPT fp32"]["tokens_per_s"]
    print(
        f"\n{args.iters} iterations x 8 x 256 tokens, median over iterations {args.warmup + 1}..{args.iters}"
    )
    print("| run | tokens/s (median) | vs nanoGPT | per repeat | peak RSS (MiB) | loss, last 5 iters |")
    print("|---|---:|---:|---|---:|---:|")
    for name, row in table.items():
        repeats = " / ".join(f"{v:,.0f}" for v in row["per_repeat"])
        print(
            f"| {name} | {row['tokens_per_s']:,.0f} | {row['tokens_per_s'] / base:.2f}x | {repeats} | "
            f"{row['peak_rss_mib']:,.0f} | {row['final_loss']:.3f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"table": table, "raw": results, "args": vars(args)}, default=str, indent=2)
        )


if __name__ == "__main__":
    main()
