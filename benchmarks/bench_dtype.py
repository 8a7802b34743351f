"""fp32 against bf16 autocast on this CPU: training steps of one model in one process, alternating.

    python benchmarks/bench_dtype.py [--configs nanogpt demo demo-bytes tiny] [--threads 1] [--repeats 5]
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/bench_dtype.py   # the same CPU without AMX

What `dtype = "auto"` is decided on (`noisylm.runtime.auto_cpu_dtype`). For each config, one GPT per
dtype (the same initial weights), then ``--repeats`` rounds of ``--steps`` training steps in fp32 and
then in bf16: forward and backward as the trainer runs them (autocast, chunked output layer, fp32
weights and fused AdamW state), gradient clipping, an optimizer step. Random token windows: the speed
does not depend on the text. Alternating in one process keeps a busy machine's load about equal for
both. Reported: median tokens/s and range per dtype, and bf16/fp32 per round, timed by the wall clock
and by the process's CPU time (with one thread, CPU time is the work done, nearly unaffected by other
processes on the machine).

``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` keeps oneDNN (which runs PyTorch's bf16 matmuls) off AMX: the
numbers of a CPU with AVX512-BF16 but no AMX, such as Cooper Lake or AMD Zen 4, on this one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from noisylm.model import GPT, GPTConfig
from noisylm.runtime import autocast_context, cpu_flags

CONFIGS = {  # name: (model, batch size)
    # the nanoGPT comparison of bench_train.py (the GPT-2 vocabulary), 16M parameters
    "nanogpt": (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50257), 8),
    # the demo's: `small` with a 2,048-id BPE (demo.toml), and with bytes (demo-bytes.toml)
    "demo": (GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=2049), 128),
    "demo-bytes": (GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=257), 16),
    # the BPE demo until 2026-12-02 (demo-bpe.toml): longer windows, fewer of them
    "demo-bpe-128": (GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=2049), 64),
    "tiny": (GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=257), 16),
    "gpt2-124m": (GPTConfig(), 1),  # slow on a CPU: minutes per round
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure(name: str, steps: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per step of each dtype in each round, by the wall clock and by CPU time."""
    config, batch = CONFIGS[name]
    generator = torch.Generator().manual_seed(0)
    runs = {}
    for label, dtype in DTYPES.items():
        torch.manual_seed(0)
        model = GPT(config)
        optimizer = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95))
        runs[label] = (model, optimizer, autocast_context(torch.device("cpu"), dtype))

    def step(label: str) -> None:
        model, optimizer, autocast = runs[label]
        windows = torch.randint(0, config.vocab_size, (batch, config.block_size + 1), generator=generator)
        with autocast:
            _, loss = model(windows[:, :-1], windows[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for label in runs:  # first steps allocate and pick kernels
        for _ in range(2):
            step(label)
    seconds: dict[str, dict[str, list[float]]] = {label: {"wall": [], "cpu": []} for label in runs}
    for _ in range(repeats):
        for label in runs:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step(label)
            seconds[label]["wall"].append((time.perf_counter() - wall) / steps)
            seconds[label]["cpu"].append((time.process_time() - cpu) / steps)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=["nanogpt", "demo", "demo-bytes", "tiny"], choices=CONFIGS
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=3, help="training steps per dtype per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (fp32 then bf16 in each)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    amx = {"amx_tile", "amx_bf16"} <= flags
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); AMX {'yes' if amx else 'no'}, AVX512-BF16 "
        f"{'yes' if 'avx512_bf16' in flags else 'no'}; ONEDNN_MAX_CPU_ISA="
        f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}; load average {os.getloadavg()[0]:.1f}"
    )
    print("| config | clock | fp32 tokens/s (range) | bf16 tokens/s (range) | bf16/fp32 median (per round) |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        config, batch = CONFIGS[name]
        tokens = batch * config.block_size
        seconds = measure(name, args.steps, args.repeats)
        for clock in ("cpu", "wall"):
            fp32, bf16 = seconds["fp32"][clock], seconds["bf16"][clock]
            ratios = [a / b for a, b in zip(fp32, bf16, strict=True)]
            cells = [
                f"{tokens / statistics.median(s):,.0f} ({tokens / max(s):,.0f}-{tokens / min(s):,.0f})"
                for s in (fp32, bf16)
            ]
            rounds = " ".join(f"{r:.2f}" for r in ratios)
            ratio = f"{statistics.median(ratios):.2f}x ({rounds})"
            print(f"| {name} | {clock} | {cells[0]} | {cells[1]} | {ratio} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
