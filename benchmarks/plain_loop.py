"""A plain training loop of noisylm's GPT: the reference that bench_train.py holds the trainer against.

    python benchmarks/plain_loop.py --data SHARDS --iters 30 [--model small --block-size 128 ...]

What a user would write by hand around `noisylm.model.GPT`: random windows from ``train.bin``
(nanoGPT's ``get_batch``), the same AdamW (``configure_optimizer``), warm-up then cosine learning rate,
autocast in ``--dtype``, gradient clipping; no evaluation, checkpoints, metrics files or bookkeeping.
One JSON line per iteration on stdout: ``{"iter", "loss", "seconds"}`` (wall time of the iteration,
reading its batch included, as nanoGPT's ``train.py`` times it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from noisylm.model import GPT, preset
from noisylm.runtime import autocast_context, resolve_dtype


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a shard set (noisylm prepare)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--model", default="small")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--min-lr", type=float, default=2e-4)
    parser.add_argument("--warmup-iters", type=int, default=15)
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or auto (noisylm's rule)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dtype = resolve_dtype(args.dtype, device)
    manifest = json.loads((args.data / "manifest.json").read_text())
    data = np.memmap(args.data / "train.bin", dtype=np.uint16, mode="r")
    torch.manual_seed(args.seed)
    model = GPT(preset(args.model, vocab_size=manifest["vocab_size"], block_size=args.block_size))
    optimizer = model.configure_optimizer(0.1, args.learning_rate, (0.9, 0.95))
    rng = np.random.default_rng(args.seed)
    B, T = args.batch_size, args.block_size

    def lr_at(it: int) -> float:
        if it < args.warmup_iters:
            return args.learning_rate * (it + 1) / (args.warmup_iters + 1)
        ratio = (it - args.warmup_iters) / max(1, args.iters - args.warmup_iters)
        return args.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.learning_rate - args.min_lr)

    print(json.dumps({"dtype": str(dtype).removeprefix("torch.")}), flush=True)
    for it in range(args.iters):
        started = time.perf_counter()
        starts = rng.integers(0, len(data) - T - 1, B)
        batch = torch.from_numpy(np.stack([data[s : s + T + 1] for s in starts]).astype(np.int64))
        x, y = batch[:, :-1], batch[:, 1:]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        with autocast_context(device, dtype):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        print(
            json.dumps({"iter": it + 1, "loss": value, "seconds": time.perf_counter() - started}), flush=True
        )


if __name__ == "__main__":
    main()
