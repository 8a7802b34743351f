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
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, batch_size=8)


def prepare_data(work: Path, max_plays: int) -> Path:
    from noisylm.data.corpora import bundled_corpora
    from noisylm.data.preparation import prepare

    plays = sorted(bundled_corpora()["shakespeare"].iterdir())[:max_plays]
    out = work / "shards"
    prepare(plays, out, tokenizer="gpt2", val_fraction=0.2, seed=0, progress=False)
    nano = work / "nanogpt" / "data" / "bench"  # nanoGPT reads data/<dataset>/{train,val}.bin
    nano.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(out / f"{split}.bin", nano / f"{split}.bin")
    return out


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, int]:
    """Run ``cmd``; return its output and its peak RSS in bytes (Linux: ru_maxrss in KiB)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    return output, usage.ru_maxrss * 1024


def bench_nanogpt(nanogpt_dir: Path, work: Path, iters: int, env: dict[str, str]) -> dict:
    cwd = work / "nanogpt"
    shutil.copy(nanogpt_dir / "configurator.py", cwd / "configurator.py")  # train.py exec()s it from cwd
    args = {
        **COMMON,
        "dataset": "bench",
        "out_dir": str(cwd / "out"),
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
    cmd = [sys.executable, str(nanogpt_dir / "train.py")] + [f"--{k}={v}" for k, v in args.items()]
    output, rss = run(cmd, cwd, env)
    pattern = re.compile(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
    rows = [(int(i), float(loss), float(ms) / 1000) for i, loss, ms in pattern.findall(output)]
    tokens = COMMON["batch_size"] * COMMON["block_size"]
    return {"losses": [r[1] for r in rows], "tokens_per_s": [tokens / r[2] for r in rows], "rss": rss}


VARIANTS = {  # noisylm settings to try; the fastest is reported as its best CPU setting
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "fp32+compile": {"dtype": "float32", "compile": "true"},
}


def bench_noisylm(data: Path, work: Path, iters: int, variant: dict, env: dict[str, str], tag: str) -> dict:
    out = work / f"run-{tag}"
    args = {
        **COMMON,
        "data": str(data),
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
    cmd = [sys.executable, "-m", "noisylm", "train", "--out", str(out), "--overwrite"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    _, rss = run(cmd, work, env)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "train_loss" in m]
    return {
        "losses": [m["train_loss"] for m in train_lines],
        "tokens_per_s": [m["tokens_per_s"] for m in train_lines],
        "rss": rss,
    }


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

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
