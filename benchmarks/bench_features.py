"""Feature-extraction speed: `noisylm extract` vs calling sentence-transformers directly, same run.

The reference is `SentenceTransformer.encode` on the same prompts with the same batch size (what a user
would write by hand, without a cache). `extract` adds dataset loading, splitting, hashing the backbone and
writing the cache; the table shows what that costs. Also: the pixels backbone on digits.

    python benchmarks/bench_features.py [--max-train 1200 --max-test 400 --batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from noisylm.datasets import load_dataset
from noisylm.features import extract, load_backbone


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

    start = time.perf_counter()
    backbone = load_backbone("minilm", device="cpu")
    load_s = time.perf_counter() - start
    data = load_dataset("wordnet", max_train=args.max_train, max_test=args.max_test)
    prompts = [r["text"] for split in data.splits.values() for r in split.inputs]
    n = len(prompts)

    start = time.perf_counter()
    with torch.inference_mode():
        backbone.model.encode(
            prompts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False
        )
    reference_s = time.perf_counter() - start

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract(
            backbone, "wordnet", Path(tmp) / "wn", max_train=args.max_train, max_test=args.max_test,
            batch_size=args.batch_size, progress=False,
        )  # fmt: skip
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        extract("pixels", "digits", Path(tmp) / "digits", progress=False, device="cpu")
        pixels_s = time.perf_counter() - start
    rows.append(("MiniLM load (once)", "-", load_s, None))
    rows.append(("MiniLM: SentenceTransformer.encode (reference)", n, reference_s, n / reference_s))
    rows.append(
        ("MiniLM: noisylm extract (load data, split, hash, encode, write)", n, extract_s, n / extract_s)
    )
    rows.append(("pixels on digits: noisylm extract", 1797, pixels_s, 1797 / pixels_s))
    print(f"\nWordNet glosses: {n} (train {len(data.splits['train'])}, val {len(data.splits['val'])}, "
          f"test {len(data.splits['test'])}), batch size {args.batch_size}\n")  # fmt: skip
    print("| what | examples | seconds | examples/s |")
    print("|---|---:|---:|---:|")
    for what, count, seconds, rate in rows:
        print(f"| {what} | {count} | {seconds:.1f} | {'' if rate is None else f'{rate:.0f}'} |")
    print(f"\nextract / reference time: {extract_s / reference_s:.2f}x")
    print(f"# load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
