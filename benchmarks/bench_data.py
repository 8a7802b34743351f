"""Data-stage benchmarks, each against a named reference measured in the same run.

(a) `prepare` throughput, GPT-2 tokenizer, 2 processes, vs one tiktoken `encode_ordinary` call over
    the same text (MB of text per second; target >= 1.6x).
(b) `inject` at alpha = 0.2 into a 200M-token shard vs `shutil.copyfile` of that shard (MB of input
    shard per second; target >= 0.5x). The shard is generated in a temporary directory and deleted.
(c) peak RSS of `prepare` (2 processes) on a 1 GB text file, one document (target <= 1 GB), sampled
    from /proc over the whole process tree; with the bytes tokenizer on 1 GB and GPT-2 on --rss-gpt2-gb
    (GPT-2 on a full GB takes ~1 min per core-GB/19 MB/s; pass --rss-gpt2-gb 1 to run it).
(d) `prepare` on many short documents, as web corpora come: the bundled texts cut at line ends into
    documents of at most 1.8 KB, repeated to >= --short-mb MB and >= 30,000 documents, in one JSONL
    file (one {"text": ...} per line). Alternating 3 times, each in a fresh process:
      noisylm:   the whole `noisylm prepare docs.jsonl --tokenizer gpt2 --num-proc N` command, wall clock
                 from spawning the interpreter to its exit (start-up, imports, tokenizer, reading,
                 tokenizing, writing, hashing, manifest);
      reference: a Python process that reads the JSONL (json.loads per line) and calls tiktoken's
                 `encode_ordinary_batch(docs, num_threads=N)`; its time counts only that read + encode
                 (not the interpreter start-up, imports, building the encoding, or writing the ids, which
                 it does afterwards untimed, to check the token count);
      one call:  tiktoken `encode_ordinary` on all documents concatenated, in this process (one thread).
    MB = UTF-8 bytes of document text (not of the JSONL file). Median of the 3 runs; target: noisylm
    >= 1.6x the reference. The JSON line also gives each run's CPU seconds (all threads and processes;
    for the reference, of its timed part), which a busy machine disturbs less than wall clock.

usage: python benchmarks/bench_data.py [--only a,b,c,d] [--prepare-mb 32] [--inject-tokens 200000000]
       [--rss-gb 1.0] [--short-mb 50] [--short-procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness import subprocess_env
from noisylm.artifacts import atomic_write_json, sha256_file
from noisylm.data.corpora import bundled_corpora, iter_documents
from noisylm.data.injection import inject
from noisylm.data.preparation import prepare
from noisylm.data.shards import MANIFEST, SHARD_FORMAT
from noisylm.data.tokenizers import get_tokenizer

REPEATS = 3  # (b)
REPEATS_PREPARE = 2  # (a)


def bundled_text() -> list[str]:
    corpora = bundled_corpora()
    return list(iter_documents([corpora["shakespeare"], corpora["python-docs"]]))


def write_corpus(folder: Path, megabytes: float, docs: list[str]) -> int:
    """A folder of real documents (the bundled corpora, repeated) totalling ``megabytes``."""
    folder.mkdir(parents=True)
    total, i = 0, 0
    while total < megabytes * 1e6:
        text = docs[i % len(docs)]
        (folder / f"doc{i:05d}.txt").write_text(text, encoding="utf-8")
        total += len(text.encode("utf-8"))
        i += 1
    return total


def bench_prepare(tmp: Path, megabytes: float) -> dict:
    docs = bundled_text()
    folder = tmp / "text"
    size = write_corpus(folder, megabytes, docs)
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.iterdir()))
    enc = get_tokenizer("gpt2").encoding
    results = {"text_MB": size / 1e6}
    for _ in range(REPEATS_PREPARE):  # alternate the contenders; keep each one's best time (like timeit)
        t0 = time.perf_counter()
        results["reference_tokens"] = len(enc.encode_ordinary(text))
        results["reference_s"] = min(results.get("reference_s", 1e9), time.perf_counter() - t0)
        for procs in (1, 2):
            t0 = time.perf_counter()
            shards = prepare(
                [folder],
                tmp / f"shards{procs}",
                tokenizer="gpt2",
                num_proc=procs,
                progress=False,
                overwrite=True,
            )
            key = f"prepare_{procs}proc_s"
            results[key] = min(results.get(key, 1e9), time.perf_counter() - t0)
            results[f"prepare_{procs}proc_tokens"] = (
                shards.splits["train"].tokens + shards.splits["val"].tokens
            )
    return results


def make_shard(path: Path, tokens: int) -> None:
    """A valid clean GPT-2 shard set of ``tokens`` training tokens (real Shakespeare ids, tiled)."""
    path.mkdir(parents=True)
    play = np.asarray(get_tokenizer("gpt2").encode(bundled_text()[0]) + [50256], dtype=np.uint16)
    reps = -(-tokens // len(play))
    with open(path / "train.bin", "wb") as fh:
        block = np.tile(play, max(1, (1 << 24) // len(play)))
        written = 0
        while written < tokens:
            part = block[: tokens - written]
            fh.write(part.tobytes())
            written += len(part)
    play[:1000].tofile(path / "val.bin")
    train_docs = int(tokens // len(play)) + (1 if tokens % len(play) >= len(play) else 0)
    del reps
    manifest = {
        "format": SHARD_FORMAT,
        "tokenizer": "gpt2",
        "vocab_size": 50257,
        "eot_id": 50256,
        "dtype": "uint16",
        "splits": {
            "train": {
                "file": "train.bin",
                "tokens": tokens,
                "documents": train_docs,
                "sha256": sha256_file(path / "train.bin"),
            },
            "val": {
                "file": "val.bin",
                "tokens": 1000,
                "documents": 0,
                "sha256": sha256_file(path / "val.bin"),
            },
        },
        "sources": [],
        "val_fraction": 0.0,
        "seed": 0,
        "noise": None,
        "provenance": {},
    }
    atomic_write_json(path / MANIFEST, manifest)


def bench_inject(tmp: Path, tokens: int) -> dict:
    shard = tmp / "big"
    make_shard(shard, tokens)
    size = (shard / "train.bin").stat().st_size
    shutil.copyfile(shard / "train.bin", tmp / "warm.bin")  # page cache warm for both contenders
    os.remove(tmp / "warm.bin")
    t_copy, t_inject = [], []
    for _ in range(REPEATS):  # alternate the contenders; keep each one's best time (like timeit)
        t0 = time.perf_counter()
        shutil.copyfile(shard / "train.bin", tmp / "copy.bin")
        t_copy.append(time.perf_counter() - t0)
        os.remove(tmp / "copy.bin")
        t0 = time.perf_counter()
        out = inject(shard, tmp / "noisy", alpha=0.2, kind="uniform", seed=0, progress=False, overwrite=True)
        t_inject.append(time.perf_counter() - t0)
    t_copy, t_inject = min(t_copy), min(t_inject)
    result = {
        "shard_tokens": tokens,
        "shard_MB": size / 1e6,
        "copyfile_s": t_copy,
        "inject_s": t_inject,
        "noise_tokens": out.noise["noise_tokens"],
        "alpha_achieved": out.noise["alpha_achieved"],
    }
    shutil.rmtree(tmp / "noisy")
    shutil.rmtree(shard)
    return result


SHORT_DOC_BYTES = 1800  # (d): documents of at most this many UTF-8 bytes, cut at line ends
SHORT_MIN_DOCS = 30_000
REPEATS_SHORT = 3


def short_documents(text: str, limit: int = SHORT_DOC_BYTES) -> list[str]:
    """``text`` cut after the last newline that keeps each document within ``limit`` UTF-8 bytes (a
    line longer than that is cut at the limit); whitespace-only documents are dropped."""
    docs, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        while len(line.encode("utf-8")) > limit:  # rare: one line longer than a document
            docs.append(line[: limit // 4])  # (<= limit bytes whatever the characters)
            line = line[limit // 4 :]
        n = len(line.encode("utf-8"))
        if size + n > limit:
            docs.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    docs.append("".join(current))
    return [d for d in docs if d.strip()]


def write_short_corpus(path: Path, megabytes: float) -> tuple[int, int]:
    """The bundled texts as short documents, repeated in order until the file holds >= ``megabytes``
    MB of text and >= SHORT_MIN_DOCS documents; one JSON record per line. Returns (bytes, docs)."""
    unique = [d for text in bundled_text() for d in short_documents(text)]
    total = count = 0
    with open(path, "w", encoding="utf-8") as fh:
        while total < megabytes * 1e6 or count < SHORT_MIN_DOCS:
            doc = unique[count % len(unique)]
            fh.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            total += len(doc.encode("utf-8"))
            count += 1
    return total, count


# (d)'s reference. tiktoken.get_encoding("gpt2") would download the vocabulary; the encoding built
# from the bundled files is the same tiktoken.Encoding (same ranks, pattern and special token).
REFERENCE_SCRIPT = """
import json, sys, time
import numpy as np
from noisylm.data.tokenizers import get_tokenizer
enc = get_tokenizer("gpt2").encoding
path, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, c0 = time.perf_counter(), time.process_time()
with open(path, encoding="utf-8") as fh:
    docs = [json.loads(line)["text"] for line in fh]
ids = enc.encode_ordinary_batch(docs, num_threads=threads)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
flat = []
for doc in ids:
    flat += doc
    flat.append(enc.eot_token)
np.asarray(flat, dtype=np.uint16).tofile(out)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "tokens": len(flat), "documents": len(docs)}))
"""


def bench_short_docs(tmp: Path, megabytes: float, procs: int) -> dict:
    tmp.mkdir()
    corpus = tmp / "docs.jsonl"
    size, count = write_short_corpus(corpus, megabytes)
    env = subprocess_env()
    ours_cmd = [sys.executable, "-m", "noisylm", "prepare", str(corpus), "--out", str(tmp / "shards")]
    ours_cmd += ["--tokenizer", "gpt2", "--num-proc", str(procs), "--quiet", "--overwrite"]
    ref_cmd = [sys.executable, "-c", REFERENCE_SCRIPT, str(corpus), str(tmp / "reference.bin"), str(procs)]
    with open(corpus, encoding="utf-8") as fh:
        text = "".join(json.loads(line)["text"] for line in fh)
    enc = get_tokenizer("gpt2").encoding
    ours, ref, single, loads, ours_cpu, ref_cpu = [], [], [], [], [], []
    for _ in range(REPEATS_SHORT):  # alternate the contenders; report the medians
        loads.append(os.getloadavg()[0])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(ours_cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        ours.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        out = subprocess.run(ref_cmd, env=env, check=True, capture_output=True, text=True).stdout
        reference = json.loads(out.splitlines()[-1])
        ref.append(reference["seconds"])
        ref_cpu.append(reference["cpu_seconds"])
        t0 = time.perf_counter()
        single_tokens = len(enc.encode_ordinary(text))
        single.append(time.perf_counter() - t0)
    manifest = json.loads((tmp / "shards" / MANIFEST).read_text())
    splits = manifest["splits"]
    result = {
        "text_MB": size / 1e6,
        "documents": count,
        "mean_doc_bytes": size / count,
        "jsonl_MB": corpus.stat().st_size / 1e6,
        "procs": procs,
        "prepare_s": ours,
        "reference_s": ref,
        "one_call_s": single,
        # CPU seconds (all threads and processes): the whole command; the reference's timed part
        "prepare_cpu_s": ours_cpu,
        "reference_cpu_s": ref_cpu,
        "load_average_1min": loads,
        "prepare_tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        "prepare_documents": splits["train"]["documents"] + splits["val"]["documents"],
        "reference_tokens": reference["tokens"],
        "one_call_tokens": single_tokens,
    }
    if (result["prepare_tokens"], result["prepare_documents"]) != (reference["tokens"], count):
        raise SystemExit(f"(d) noisylm and the reference disagree on the token/document counts: {result}")
    shutil.rmtree(tmp)
    return result


RSS_SCRIPT = """
import sys
from noisylm.data.preparation import prepare
prepare([sys.argv[1]], sys.argv[2], tokenizer=sys.argv[3], num_proc=2, val_fraction=0.0, progress=False)
"""


def _tree_rss_kb(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def bench_rss(tmp: Path, gigabytes: float, tokenizer: str) -> dict:
    docs = "\n".join(bundled_text())
    big = tmp / "one-gigabyte.txt"
    with open(big, "w", encoding="utf-8") as fh:  # ONE document: the hardest case for streaming
        written = 0
        while written < gigabytes * 1e9:
            fh.write(docs)
            written += len(docs)
    size = big.stat().st_size
    peak = 0
    proc = subprocess.Popen([sys.executable, "-c", RSS_SCRIPT, str(big), str(tmp / "rss-shards"), tokenizer])
    t0 = time.perf_counter()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    tokens = (
        json.loads((tmp / "rss-shards" / MANIFEST).read_text())["splits"]["train"]["tokens"]
        if code == 0
        else 0
    )
    shutil.rmtree(tmp / "rss-shards", ignore_errors=True)
    os.remove(big)
    return {
        "input_MB": size / 1e6,
        "peak_tree_rss_MB": peak / 1024,
        "exit_code": code,
        "seconds": seconds,
        "tokens": tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--prepare-mb", type=float, default=32.0)
    ap.add_argument("--inject-tokens", type=int, default=200_000_000)
    ap.add_argument("--rss-gb", type=float, default=1.0)
    ap.add_argument("--rss-gpt2-gb", type=float, default=0.25, help="(c) also with gpt2 on this much")
    ap.add_argument("--short-mb", type=float, default=50.0, help="(d) at least this many MB of text")
    ap.add_argument("--short-procs", type=int, default=2, help="(d) --num-proc and reference threads")
    args = ap.parse_args()
    which = set(args.only.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="noisylm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "a" in which:
            r = bench_prepare(tmp / "a", args.prepare_mb)
            ref = r["text_MB"] / r["reference_s"]
            for procs in (1, 2):
                ours = r["text_MB"] / r[f"prepare_{procs}proc_s"]
                rows.append(
                    (
                        f"(a) prepare gpt2, {procs} proc, {r['text_MB']:.0f} MB",
                        f"{ours:.1f} MB/s",
                        f"tiktoken encode_ordinary {ref:.1f} MB/s",
                        f"{ours / ref:.2f}x",
                        ">= 1.6x" if procs == 2 else "",
                    )
                )
            print(json.dumps(r), file=sys.stderr)
        if "b" in which:
            r = bench_inject(tmp / "b", args.inject_tokens)
            ours, ref = r["shard_MB"] / r["inject_s"], r["shard_MB"] / r["copyfile_s"]
            rows.append(
                (
                    f"(b) inject uniform a=0.2 into {r['shard_tokens'] / 1e6:.0f}M tokens",
                    f"{ours:.0f} MB/s ({r['inject_s']:.2f} s)",
                    f"shutil.copyfile {ref:.0f} MB/s ({r['copyfile_s']:.2f} s)",
                    f"{ours / ref:.2f}x",
                    ">= 0.5x",
                )
            )
            print(json.dumps(r), file=sys.stderr)
        if "c" in which:
            (tmp / "c").mkdir()
            for tokenizer, gigabytes in (("bytes", args.rss_gb), ("gpt2", args.rss_gpt2_gb)):
                if gigabytes <= 0:
                    continue
                r = bench_rss(tmp / "c", gigabytes, tokenizer)
                rows.append(
                    (
                        f"(c) prepare {tokenizer}, 2 proc, one {r['input_MB'] / 1000:.2f} GB file",
                        f"peak RSS {r['peak_tree_rss_MB']:.0f} MB (all processes)",
                        f"{r['seconds']:.0f} s, {r['tokens'] / 1e6:.0f}M tokens, exit {r['exit_code']}",
                        f"{r['peak_tree_rss_MB'] / 1024:.2f} GB",
                        "<= 1 GB",
                    )
                )
                print(json.dumps(r), file=sys.stderr)
        if "d" in which:
            r = bench_short_docs(tmp / "d", args.short_mb, args.short_procs)
            mb, n = r["text_MB"], args.short_procs
            ours = statistics.median(mb / t for t in r["prepare_s"])
            ref = statistics.median(mb / t for t in r["reference_s"])
            one = statistics.median(mb / t for t in r["one_call_s"])
            ratios = [t_ref / t for t, t_ref in zip(r["prepare_s"], r["reference_s"], strict=True)]
            what = f"{mb:.0f} MB, {r['documents']} docs of {r['mean_doc_bytes'] / 1e3:.2f} KB"
            rows.append(
                (
                    f"(d) whole `noisylm prepare --num-proc {n}` gpt2, JSONL, {what}",
                    f"{ours:.1f} MB/s",
                    f"read + tiktoken `encode_ordinary_batch(num_threads={n})` {ref:.1f} MB/s",
                    f"{statistics.median(ratios):.2f}x (runs {', '.join(f'{x:.2f}' for x in ratios)})",
                    ">= 1.6x",
                )
            )
            rows.append(
                (
                    "(d) same command, same runs",
                    f"{ours:.1f} MB/s",
                    f"tiktoken `encode_ordinary`, one call on all the text, {one:.1f} MB/s",
                    f"{ours / one:.2f}x",
                    "",
                )
            )
            print(json.dumps(r), file=sys.stderr)
    print("| benchmark | noisylm | reference | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
