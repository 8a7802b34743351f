"""Benchmark: model-free `noisylm scan` over a 200M-token shard vs one `np.bincount` pass.

The reference is the memory-bandwidth floor of any scan: one `np.bincount` over the same memmap, in the
same run, with the file already in the page cache for both. The shard is the bundled Shakespeare corpus
(GPT-2 tokens) tiled to the requested size, with 5% uniform noise inserted as documents (log-normal
lengths, median 512 tokens), written to a temporary directory and deleted afterwards.

Each measurement runs in its own subprocess so that its peak memory (ru_maxrss, which counts the
memmap's resident file pages too, and the tracemalloc peak of heap allocations) is its own.

    python benchmarks/bench_scan.py                 # 200M tokens
    python benchmarks/bench_scan.py --tokens 20e6   # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
what, shard_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
tracemalloc.start()
if what == "bincount":
    from noisylm.data.shards import ShardSet
    tokens = ShardSet.open(shard_dir).tokens("train")
    started = time.perf_counter()
    counts = np.bincount(tokens, minlength=50257)
    seconds = time.perf_counter() - started
    extra = {"total": int(counts.sum())}
else:
    from noisylm.scan import scan
    started = time.perf_counter()
    report = scan(shard_dir, out, progress=False)
    seconds = time.perf_counter() - started
    extra = {"detect_seconds": report["seconds"], "alpha_hat": report["alpha_hat"], "truth": report["truth"]}
peak_heap = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": seconds, "peak_heap_mb": peak_heap / 2**20,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def build_shard(root: Path, total_tokens: int, alpha: float, seed: int) -> Path:
    """Bundled Shakespeare (GPT-2 tokens) tiled to ``total_tokens`` with uniform noise documents."""
    from noisylm.data.preparation import prepare
    from noisylm.data.shards import ShardSet, write_manifest

    base = root / "base"
    prepare([], base, tokenizer="gpt2", corpus="shakespeare", val_fraction=0.05, seed=0, progress=False)
    shards = ShardSet.open(base)
    clean = np.asarray(shards.tokens("train"))
    rng = np.random.default_rng(seed)
    out = root / "big"
    out.mkdir()
    spans = []
    written = 0
    with open(out / "train.bin", "wb") as fh:
        while written < total_tokens:
            piece = clean[: min(len(clean), total_tokens - written)]
            fh.write(piece.tobytes())
            written += len(piece)
            noise_total = int(alpha * len(piece) / (1 - alpha))
            while noise_total > 0 and written < total_tokens:
                length = min(
                    int(max(1, rng.lognormal(np.log(512), 1.0))), noise_total, total_tokens - written
                )
                spans.append([written, length])
                fh.write(rng.integers(0, 50256, size=length, dtype=np.uint16).tobytes())
                written += length
                noise_total -= length
    (out / "val.bin").write_bytes((base / "val.bin").read_bytes())
    manifest = dict(shards.manifest)
    manifest["splits"] = {
        "train": {"file": "train.bin", "tokens": written, "documents": None, "sha256": None},
        "val": shards.manifest["splits"]["val"],
    }
    manifest["noise"] = {
        "kind": "uniform",
        "placement": "interleave",
        "alpha_achieved": sum(n for _, n in spans) / written,
        "spans": spans,
    }
    write_manifest(out / "manifest.json", manifest)
    return out


def run_child(what: str, shard_dir: Path, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, what, str(shard_dir), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=float, default=200e6, help="tokens in the benchmark shard")
    parser.add_argument("--alpha", type=float, default=0.05, help="uniform noise proportion")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (best is reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        shard = build_shard(root, int(args.tokens), args.alpha, seed=0)
        print(f"built {int(args.tokens):,}-token shard in {time.perf_counter() - started:.1f} s")
        (shard / "train.bin").read_bytes()  # warm the page cache for both contenders
        reference = [run_child("bincount", shard, root / "unused") for _ in range(args.repeats)]
        scans = [run_child("scan", shard, root / f"scan-{i}") for i in range(args.repeats)]
    ref = min(reference, key=lambda r: r["seconds"])
    best = min(scans, key=lambda r: r["seconds"])
    ratio = best["seconds"] / ref["seconds"]
    truth = best["truth"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| what | seconds | tokens/s | x bincount | peak heap (MB) | max RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for name, r in (("np.bincount(memmap) (reference)", ref), ("noisylm scan (model-free)", best)):
        print(
            f"| {name} | {r['seconds']:.2f} | {args.tokens / r['seconds'] / 1e6:.1f}M | "
            f"{r['seconds'] / ref['seconds']:.2f} | {r['peak_heap_mb']:.0f} | {r['max_rss_mb']:.0f} |"
        )
    print(
        f"\nscan/bincount = {ratio:.2f}x (target <= 5x); detection alone {best['detect_seconds']:.2f} s; "
        f"alpha={truth['alpha']:.4f} alpha_hat={best['alpha_hat']:.4f} precision={truth['precision']:.4f} "
        f"recall={truth['recall']:.4f} F1={truth['f1']:.4f}"
    )


if __name__ == "__main__":
    main()
