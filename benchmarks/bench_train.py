"""Training throughput on CPU: noisylm's trainer against nanoGPT's train.py, and the demo's configuration
against a plain loop of the same model, each pair measured in the same run, alternating.

    python benchmarks/bench_train.py --nanogpt-dir /path/to/nanoGPT [--iters 20] [--repeats 3]

1. nanoGPT comparison. Config (both): n_layer 4, n_head 4, n_embd 256, block 256, batch 8, no gradient
   accumulation, GPT-2 vocabulary (50257, padded to 50304), bias, no dropout, lr 6e-4 with 5 warm-up
   steps, CPU, no compile. Data: 8 bundled Shakespeare plays in GPT-2 BPE, written once as
   train.bin/val.bin and read by both (nanoGPT's format). nanoGPT runs unchanged from ``--nanogpt-dir``
   (not vendored), in fp32. noisylm rows: ``--variants`` (default: fp32, and `auto`, what
   ``dtype = "auto"`` picks on this CPU; config.json names it and why).
2. The demo's configuration (the ``[train]`` table of the packaged ``demo`` sweep config, read when
   the benchmark starts: the `small` GPT, its block, batch, learning rate and paired sampling, on the
   bundled Shakespeare in the demo's tokenizer), one torch thread per process and two processes at
   once, as the demo runs: ``noisylm train`` and `plain_loop.py` (the same model, same data, same
   dtype, in a hand-written loop) side by side, so that both see the same machine load, in each of
   ``--demo-dtypes`` (default: the dtype the demo pins, and `auto`).

Each configuration is its own process, run in turn (a demo pair: at the same time), ``--repeats`` times.
Reported per row: the median tokens/s of one process over the iterations after ``--warmup`` (each
process's per-iteration wall time), each repeat's median, peak RSS of the process (``wait4``), and the
training loss averaged over the last 5 iterations (random windows on both sides: equal within sampling
noise, not bitwise). The machine (CPU model, AMX / AVX512-BF16, cores, torch) and the load average
before and after are printed with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from harness import SRC, nanogpt_train, noisylm_train, prepare_data, run, subprocess_env

COMMON = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, batch_size=8)
PLAIN_LOOP = Path(__file__).resolve().parent / "plain_loop.py"

VARIANTS = {  # noisylm settings for the nanoGPT comparison
    "fp32": {"dtype": "float32"},
    "auto": {"dtype": "auto"},
    "bf16": {"dtype": "bfloat16"},
    "fp32+compile": {"dtype": "float32", "compile": "true"},
}
PLAIN_FIELDS = ("block_size", "batch_size", "learning_rate", "min_lr", "warmup_iters")  # plain_loop.py's


def demo_config() -> tuple[dict, str]:
    """The demo's training fields that shape its speed, and its tokenizer (``configs/demo.toml``)."""
    from noisylm.experiments.config import load_sweep_config

    demo = load_sweep_config("demo")
    fields = ("model", "dtype", "grad_accum", "sampler", *PLAIN_FIELDS)
    return {k: demo.train[k] for k in fields if k in demo.train}, demo.tokenizer


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


QUIET = {  # no evaluation or checkpoint inside the timed iterations, no progress bar or TensorBoard
    "eval_interval": 10**9,
    "eval_at_start": "false",
    "eval_iters": 1,
    "checkpoint_interval": 0,
    "tensorboard": "false",
    "progress": "false",
    "device": "cpu",
}


def bench_noisylm(data: Path, work: Path, iters: int, variant: dict, env: dict[str, str], tag: str) -> dict:
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
        **QUIET,
        **variant,
    }
    return _with_dtype(noisylm_train(data, work / f"run-{tag}", args, env), work / f"run-{tag}")


def _with_dtype(result: dict, run_dir: Path) -> dict:
    record = json.loads((run_dir / "config.json").read_text())
    return {**result, "dtype": record["dtype"], "dtype_reason": record.get("dtype_reason")}


def demo_noisylm(demo: dict, data: Path, out: Path, iters: int, dtype: str, env: dict[str, str]) -> dict:
    args = {**demo, "max_iters": iters, "threads": 1, "dtype": dtype}
    return _with_dtype(noisylm_train(data, out, {**args, **QUIET}, env), out)


def demo_plain(demo: dict, data: Path, out: Path, iters: int, dtype: str, env: dict[str, str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(PLAIN_LOOP), "--data", str(data), "--iters", str(iters), "--threads", "1"]
    cmd += ["--model", demo["model"], "--dtype", dtype]
    cmd += [f"--{k.replace('_', '-')}={demo[k]}" for k in PLAIN_FIELDS]
    output, rss = run(cmd, out, env)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    steps = [m for m in lines if "iter" in m]
    tokens = demo["batch_size"] * demo["block_size"]
    return {
        "iters": [m["iter"] for m in steps],
        "losses": [m["loss"] for m in steps],
        "tokens_per_s": [tokens / m["seconds"] for m in steps],
        "rss": rss,
        "dtype": lines[0]["dtype"],
    }


def side_by_side(*jobs) -> list[dict]:
    """Run the jobs (functions of no arguments) at the same time, as the demo runs two runs at once."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: job(), jobs))


def machine() -> dict:
    """The CPU by name and the flags that decide `dtype = "auto"`, cores, torch."""
    import torch

    from noisylm.runtime import cpu_flags

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "amx": {"amx_tile", "amx_bf16"} <= flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def summarise(runs: list[dict], warmup: int) -> dict:
    speeds = [s for r in runs for s in r["tokens_per_s"][warmup:]]
    per_repeat = [statistics.median(r["tokens_per_s"][warmup:]) for r in runs]
    return {
        "tokens_per_s": statistics.median(speeds),
        "per_repeat": per_repeat,
        "peak_rss_mib": max(r["rss"] for r in runs) / 2**20,
        "final_loss": statistics.mean(loss for r in runs for loss in r["losses"][-5:]),
        "dtype": runs[0].get("dtype", "float32"),
    }


def print_table(title: str, table: dict[str, dict], base: str) -> None:
    print(f"\n{title}")
    print(
        "| run | dtype | tokens/s (median) | vs " + base + " | per repeat | peak RSS (MiB) | loss, last 5 |"
    )
    print("|---|---|---:|---:|---|---:|---:|")
    reference = table[base]["tokens_per_s"]
    for name, row in table.items():
        repeats = " / ".join(f"{v:,.0f}" for v in row["per_repeat"])
        speed = row["tokens_per_s"]
        print(
            f"| {name} | {row['dtype']} | {speed:,.0f} | {speed / reference:.2f}x | {repeats} "
            f"| {row['peak_rss_mib']:,.0f} | {row['final_loss']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nanogpt-dir", type=Path, required=True, help="a local clone of karpathy/nanoGPT")
    parser.add_argument("--iters", type=int, default=20, help="training iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="iterations left out of the median")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    parser.add_argument("--plays", type=int, default=8, help="Shakespeare plays in the nanoGPT data")
    parser.add_argument(
        "--variants", nargs="*", default=["fp32", "auto"], choices=list(VARIANTS), help="noisylm settings"
    )
    parser.add_argument("--demo-iters", type=int, default=30, help="iterations per demo-configuration run")
    parser.add_argument(
        "--demo-dtypes",
        nargs="*",
        default=None,
        help="dtypes of the demo comparison (default: the demo's own and auto); none skips it",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (args.nanogpt_dir / "train.py").is_file():
        raise SystemExit(
            f"{args.nanogpt_dir} has no train.py; pass --nanogpt-dir pointing to a nanoGPT clone"
        )

    env = subprocess_env()
    sys.path.insert(0, str(SRC))
    host = machine()
    demo_fields, demo_tokenizer = demo_config()
    if args.demo_dtypes is None:
        args.demo_dtypes = list(dict.fromkeys([demo_fields.get("dtype", "auto"), "auto"]))
    load_before = os.getloadavg()
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    nano: dict[str, list[dict]] = {"nanoGPT fp32": [], **{f"noisylm {v}": [] for v in args.variants}}
    demo: dict[str, list[dict]] = {}
    for dtype in args.demo_dtypes:
        demo[f"plain loop {dtype}"], demo[f"noisylm train {dtype}"] = [], []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        data = prepare_data(work, args.plays)
        demo_data = None
        if args.demo_dtypes:
            from noisylm.data.preparation import prepare

            demo_data = work / "demo-shards"  # `noisylm prepare --corpus shakespeare --tokenizer ...`
            prepare(None, demo_data, corpus="shakespeare", tokenizer=demo_tokenizer, progress=False)
        for repeat in range(args.repeats):
            began = time.time()
            nano["nanoGPT fp32"].append(bench_nanogpt(args.nanogpt_dir, work, args.iters, env))
            for i, name in enumerate(args.variants):
                result = bench_noisylm(data, work, args.iters, VARIANTS[name], env, f"v{i}")
                nano[f"noisylm {name}"].append(result)
            for dtype in args.demo_dtypes:
                plain, trained = side_by_side(
                    partial(
                        demo_plain,
                        demo_fields,
                        demo_data,
                        work / f"plain-{dtype}",
                        args.demo_iters,
                        dtype,
                        env,
                    ),
                    partial(
                        demo_noisylm,
                        demo_fields,
                        demo_data,
                        work / f"demo-{dtype}",
                        args.demo_iters,
                        dtype,
                        env,
                    ),
                )
                demo[f"plain loop {dtype}"].append(plain)
                demo[f"noisylm train {dtype}"].append(trained)
            print(f"repeat {repeat + 1}/{args.repeats} took {time.time() - began:.0f} s", file=sys.stderr)
    load_after = os.getloadavg()

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    def loads(values) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    print(
        f"\nMachine: {host['cpu']}, {host['cores']} cores, AMX {yes(host['amx'])}, AVX512-BF16 "
        f"{yes(host['avx512_bf16'])}; torch {host['torch']}, Python {host['python']}"
    )
    print(
        f"Started {started_at}; load average (1/5/15 min) before {loads(load_before)}, "
        f"after {loads(load_after)}"
    )
    reasons = {r.get("dtype_reason") for runs in nano.values() for r in runs if r.get("dtype_reason")}
    for reason in sorted(reasons - {"set in the config"}):
        print(f"noisylm auto: {reason}")
    nano_table = {name: summarise(runs, args.warmup) for name, runs in nano.items()}
    print_table(
        f"nanoGPT comparison: {args.iters} iterations x 8 x 256 tokens, median over iterations "
        f"{args.warmup + 1}..{args.iters}",
        nano_table,
        "nanoGPT fp32",
    )
    demo_table = {name: summarise(runs, args.warmup) for name, runs in demo.items()}
    batch, block = demo_fields["batch_size"], demo_fields["block_size"]
    demo_summary = (
        f"{demo_fields['model']}, {demo_tokenizer}, {batch} x {block} tokens, "
        f"pinned dtype {demo_fields.get('dtype', 'none')}"
    )
    for dtype in args.demo_dtypes:
        rows = {k: v for k, v in demo_table.items() if k.endswith(f" {dtype}")}
        print_table(
            f"demo configuration ({demo_summary}), dtype {dtype}: {args.demo_iters} iterations, one thread "
            "per process, the two side by side",
            rows,
            f"plain loop {dtype}",
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": host,
                    "started": started_at,
                    "load_before": load_before,
                    "load_after": load_after,
                    "nanogpt": nano_table,
                    "demo": demo_table,
                    "demo_config": {**demo_fields, "tokenizer": demo_tokenizer},
                    "raw": {"nanogpt": nano, "demo": demo},
                    "args": vars(args),
                },
                default=str,
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
