"""Freed memory kept for reuse (``noisylm.runtime.keep_freed_memory``, on while ``train`` loops) against
glibc's defaults, in one process, step by step, so that both settings see the same machine load.

    python benchmarks/bench_memory.py [--pairs 12] [--dtypes float32 bfloat16]

Model: the nanoGPT comparison's (bench_train.py): n_layer 4, n_head 4, n_embd 256, block 256, batch 8,
GPT-2 vocabulary (50257, padded to 50304), AdamW and gradient clipping as the trainer sets them; a fixed
batch of random token ids (the speed does not depend on which ids). Each pair is one step with glibc's
defaults and one with freed memory kept, in alternating order (ABBA), after a settling step of each
setting. Reported per dtype: the median step time of each setting, its minor page faults per step, and
the paired ratio (default / kept) of step times: mean with its t-based 95% interval over the pairs.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from noisylm.experiments.replicates import paired_interval  # noqa: E402
from noisylm.model import GPT, GPTConfig  # noqa: E402
from noisylm.runtime import _glibc, autocast_context, keep_freed_memory  # noqa: E402


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(dtype: torch.dtype, pairs: int) -> dict[str, list[tuple[float, int]]]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50257))
    optimizer = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95))
    idx, targets = torch.randint(0, 50257, (2, 8, 256))
    autocast = autocast_context(torch.device("cpu"), dtype)

    def step() -> tuple[float, int]:
        before, start = faults(), time.perf_counter()
        with autocast:
            _, loss = model(idx, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, faults() - before

    def one(setting: str, settle: bool = False) -> tuple[float, int]:
        if setting == "kept":
            with keep_freed_memory():
                if settle:
                    step()
                return step()
        if settle:
            step()
        return step()

    results: dict[str, list[tuple[float, int]]] = {"default": [], "kept": []}
    for setting in results:
        one(setting, settle=True)
    for pair in range(pairs):
        order = ("default", "kept") if pair % 2 == 0 else ("kept", "default")
        for setting in order:
            results[setting].append(one(setting, settle=True))
        print(f"pair {pair + 1}/{pairs}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=12, help="pairs of steps per dtype (default 12)")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    args = parser.parse_args()
    if _glibc() is None:
        raise SystemExit("keep_freed_memory applies to glibc's malloc only; this C library is not glibc")
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    header = "| dtype | setting | median step (s) | tokens/s | page faults / step | default / kept (95% t) |"
    print(header)
    print("|---|---|---:|---:|---:|---|")
    for name in args.dtypes:
        results = measure(getattr(torch, name), args.pairs)
        pairs = zip(results["default"], results["kept"], strict=True)
        ratio = paired_interval([default[0] / kept[0] - 1.0 for default, kept in pairs])
        for setting, rows in results.items():
            median = statistics.median(t for t, _ in rows)
            fault_rate = statistics.median(f for _, f in rows)
            cell = ratio.describe("+.1%", unit="pair") if setting == "kept" else ""
            rate = 8 * 256 / median
            print(f"| {name} | {setting} | {median:.3f} | {rate:,.0f} | {fault_rate:,.0f} | {cell} |")


if __name__ == "__main__":
    main()
