"""GPU training throughput: noisylm's trainer against nanoGPT's train.py, GPT-2 124M, block 1024, bf16,
torch.compile, same data, same GPU, in one run.

    python benchmarks/bench_gpu.py --nanogpt-dir /path/to/nanoGPT --out DIR      # one CUDA GPU, < 5 min
    python benchmarks/bench_gpu.py --smoke [--nanogpt-dir /path/to/nanoGPT] --out DIR   # CPU, seconds

Config (both): n_layer 12, n_head 12, n_embd 768, block 1024, ``--batch-size`` 32 windows x
``--grad-accum`` 4 micro-batches per iteration (131,072 tokens), GPT-2 vocabulary (50257, padded to
50304), bias, no dropout, AdamW lr 6e-4 (5 warm-up steps, cosine to 6e-5), grad clip 1, device cuda,
bfloat16 autocast, torch.compile, a log line every iteration. Data: the bundled Shakespeare plays in
GPT-2 BPE, one train.bin read by both. nanoGPT is run unchanged from ``--nanogpt-dir`` (not vendored);
without it only the noisylm row is measured. No network is needed: noisylm comes from this checkout's
``src/`` and the GPT-2 vocabulary from its bundled assets.

Each side runs in its own process, nanoGPT first. Reported per side: the median tokens/s over the
iterations after ``--warmup`` (compilation and the first steps are left out), MFU (noisylm: the ``mfu``
of its metrics.jsonl; nanoGPT: its printed ``mfu``, which is against an A100's 312 TFLOP/s, rescaled to
this GPU's datasheet peak, the one noisylm uses; both count 6N + 12·L·C·T FLOPs per token, PaLM
appendix B), the warm-up time, the process's wall time and peak RSS, and the training loss averaged over
the last 5 iterations (random windows in both: equal within noise, not bitwise). The table is printed
and written to ``DIR/bench_gpu.md``, everything (per-iteration numbers too) to ``DIR/bench_gpu.json``.

``--smoke`` runs the same code on CPU with a tiny model (2 layers, width 64, block 64), float32, no
compile, 6 iterations: a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import NANOGPT_PEAK_FLOPS, SRC, nanogpt_train, noisylm_train, prepare_data, subprocess_env

sys.path.insert(0, str(SRC))  # noisylm from this checkout, as the trained processes get it

GPU = dict(
    n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=32, grad_accum=4,
    device="cuda", dtype="bfloat16", compile=True, iters=30, warmup=10, plays=8,
)  # fmt: skip
SMOKE = dict(
    n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=4, grad_accum=2,
    device="cpu", dtype="float32", compile=False, iters=6, warmup=2, plays=5,  # 5: one play for val
)  # fmt: skip
SCHEDULE = dict(learning_rate=6e-4, min_lr=6e-5, warmup_iters=5)  # as nanoGPT's GPT-2 defaults, shorter
TARGET_SPEEDUP, TARGET_MFU = 1.1, 0.45  # issue 13: on an H100-class GPU
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size")


def nanogpt_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """nanoGPT's configurator names for ``cfg``. Its loop runs iterations 0..max_iters, hence the -1."""
    return {
        **{k: cfg[k] for k in MODEL_FIELDS},
        "gradient_accumulation_steps": cfg["grad_accum"],
        "device": cfg["device"],
        "dtype": cfg["dtype"],
        "compile": cfg["compile"],
        "max_iters": cfg["iters"] - 1,
        "lr_decay_iters": cfg["iters"],
        **SCHEDULE,
        "eval_interval": 10**9,  # nanoGPT still evaluates at iteration 0 (a warm-up iteration)
        "eval_iters": 1,
        "log_interval": 1,
        "always_save_checkpoint": False,
        "bias": True,
        "dropout": 0.0,
    }


def noisylm_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """``noisylm train`` options (TrainConfig fields) for ``cfg``: the gpt2-124m preset, resized in smoke."""
    return {
        "model": "gpt2-124m",
        **{k: cfg[k] for k in MODEL_FIELDS},
        "grad_accum": cfg["grad_accum"],
        "bias": "true",
        "dropout": 0.0,
        "device": cfg["device"],
        "dtype": cfg["dtype"],
        "compile": str(cfg["compile"]).lower(),
        "max_iters": cfg["iters"],
        "lr_decay_iters": cfg["iters"],
        **SCHEDULE,
        "sampler": "uniform",  # anywhere in train.bin, as nanoGPT's get_batch
        "eval_interval": 10**9,  # only the final evaluation, after the last timed iteration
        "eval_at_start": "false",
        "eval_iters": 1,
        "log_interval": 1,
        "checkpoint_interval": 0,
        "tensorboard": "false",
        "progress": "false",
    }


def gpu_info(device: str) -> dict[str, Any]:
    """The machine in words, and the GPU's dense bf16 peak (None on CPU or for an unknown GPU)."""
    import torch

    from noisylm.training.metrics import gpu_peak_flops

    info: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count(), "device": device}
    if device == "cpu":
        return {**info, "name": "CPU", "peak_flops": None}
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible to torch; run on a GPU machine, or use --smoke on CPU")
    name = torch.cuda.get_device_name(0)
    return {**info, "name": name, "cuda": torch.version.cuda, "peak_flops": gpu_peak_flops(name)}


def summarise(run: dict[str, Any], warmup: int, tokens_per_iter: int, mfu: list[float | None]) -> dict:
    """Median tokens/s and MFU over the iterations after ``warmup``; the warm-up's own time."""
    measured = run["tokens_per_s"][warmup:]
    if not measured:
        raise SystemExit(f"only {len(run['tokens_per_s'])} iterations were logged; lower --warmup")
    mfu_measured = [m for m in mfu[warmup:] if m is not None]
    return {
        "tokens_per_s": statistics.median(measured),
        "mfu": statistics.median(mfu_measured) if mfu_measured else None,
        "measured_iters": len(measured),
        "warmup_s": sum(tokens_per_iter / s for s in run["tokens_per_s"][:warmup]),
        "wall_s": run["wall_s"],
        "peak_rss_mib": run["rss"] / 2**20,
        "final_loss": statistics.mean(run["losses"][-5:]),
    }


def markdown(table: dict[str, dict], cfg: dict[str, Any], gpu: dict[str, Any], smoke: bool) -> str:
    tokens_per_iter = cfg["batch_size"] * cfg["grad_accum"] * cfg["block_size"]
    peak = f"{gpu['peak_flops'] / 1e12:,.0f} TFLOP/s dense bf16" if gpu["peak_flops"] else "peak unknown"
    lines = [
        f"{'SMOKE TEST (tiny model on CPU, not a measurement): ' if smoke else ''}"
        f"n_layer {cfg['n_layer']}, n_head {cfg['n_head']}, n_embd {cfg['n_embd']}, "
        f"block {cfg['block_size']}, "
        f"{cfg['batch_size']} x {cfg['grad_accum']} micro-batches = {tokens_per_iter:,} tokens/iteration, "
        f"{cfg['dtype']}, compile {cfg['compile']}, on {gpu['name']} ({peak}), torch {gpu['torch']}",
        f"median over iterations {cfg['warmup'] + 1}..{cfg['iters']} "
        f"(1..{cfg['warmup']}: compilation and warm-up, left out)",
        "",
        "| run | tokens/s (median) | vs nanoGPT | MFU | warm-up (s) | wall (s) | peak RSS (MiB) | "
        "loss, last 5 iters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = table.get("nanoGPT", {}).get("tokens_per_s")
    for name, row in table.items():
        ratio = f"{row['tokens_per_s'] / base:.2f}x" if base else "n/a"
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        lines.append(
            f"| {name} | {row['tokens_per_s']:,.0f} | {ratio} | {mfu} | {row['warmup_s']:.1f} | "
            f"{row['wall_s']:.0f} | {row['peak_rss_mib']:,.0f} | {row['final_loss']:.3f} |"
        )
    if not smoke:
        row = table["noisylm"]
        speed = f"{row['tokens_per_s'] / base:.2f}x" if base else "not measured (no --nanogpt-dir)"
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "unknown (GPU not in PEAK_FLOPS)"
        lines += [
            "",
            f"target (H100-class): >= {TARGET_SPEEDUP}x nanoGPT tokens/s: {speed}; "
            f"MFU >= {TARGET_MFU:.0%}: {mfu}",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nanogpt-dir", type=Path, default=None, help="a local clone of karpathy/nanoGPT")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for bench_gpu.md and .json")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the code path")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per side")
    parser.add_argument("--warmup", type=int, default=None, help="iterations left out of the medians")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per iteration")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a side is killed")
    args = parser.parse_args()
    if args.nanogpt_dir is not None and not (args.nanogpt_dir / "train.py").is_file():
        raise SystemExit(
            f"{args.nanogpt_dir} has no train.py; pass --nanogpt-dir pointing to a nanoGPT clone"
        )
    cfg = dict(SMOKE if args.smoke else GPU)
    for key in ("iters", "warmup", "batch_size", "grad_accum"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if not 0 <= cfg["warmup"] < cfg["iters"]:
        raise SystemExit(f"--warmup {cfg['warmup']} must be below --iters {cfg['iters']}")

    from noisylm.artifacts import atomic_write_json, atomic_write_text, provenance

    gpu = gpu_info(cfg["device"])
    tokens_per_iter = cfg["batch_size"] * cfg["grad_accum"] * cfg["block_size"]
    env = subprocess_env()
    raw: dict[str, dict] = {}
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        data = prepare_data(work, cfg["plays"])
        if args.nanogpt_dir is not None:
            started = time.perf_counter()
            settings = nanogpt_settings(cfg)
            run = nanogpt_train(args.nanogpt_dir, work, settings, tokens_per_iter, env, args.timeout)
            run["wall_s"] = time.perf_counter() - started
            # Printed mfu is against an A100; the same FLOPs against this GPU's peak.
            scale = NANOGPT_PEAK_FLOPS / gpu["peak_flops"] if gpu["peak_flops"] else None
            mfu = [m * scale if m is not None and scale else None for m in run["printed_mfu"]]
            raw["nanoGPT"] = {**run, "settings": settings}
            table["nanoGPT"] = summarise(run, cfg["warmup"], tokens_per_iter, mfu)
            print(f"nanoGPT done in {run['wall_s']:.0f} s", file=sys.stderr)
        started = time.perf_counter()
        settings = noisylm_settings(cfg)
        run = noisylm_train(data, work / "noisylm-run", settings, env, args.timeout)
        run["wall_s"] = time.perf_counter() - started
        raw["noisylm"] = {**run, "settings": settings}
        table["noisylm"] = summarise(run, cfg["warmup"], tokens_per_iter, run["mfu"])
        print(f"noisylm done in {run['wall_s']:.0f} s", file=sys.stderr)

    for name, row in table.items():  # a broken run must not pass for a measurement
        if not (math.isfinite(row["tokens_per_s"]) and math.isfinite(row["final_loss"])):
            raise SystemExit(f"{name}: non-finite tokens/s or loss: {row}")
    text = markdown(table, cfg, gpu, args.smoke)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench_gpu.md", text)
    record = {"smoke": args.smoke, "machine": gpu, "config": cfg, "table": table, "raw": raw}
    atomic_write_json(args.out / "bench_gpu.json", {**record, "provenance": provenance(config=cfg)})


if __name__ == "__main__":
    main()
