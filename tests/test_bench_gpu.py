"""benchmarks/bench_gpu.py: its ``--smoke`` mode (the GPU benchmark's code path, tiny model on CPU).

The noisylm side always runs; the nanoGPT side only when NOISYLM_NANOGPT_DIR names a nanoGPT clone
(CI has none, and nothing is vendored). Times are never asserted, only that they were measured.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "bench_gpu.py"
NANOGPT_DIR = os.environ.get("NOISYLM_NANOGPT_DIR")
ITERS, WARMUP = 6, 2  # the smoke configuration's


def run_smoke(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(BENCHMARK), "--smoke", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def check_side(result: dict, row: dict, tokens_per_iter: int) -> None:
    assert row["measured_iters"] == ITERS - WARMUP == len(result["tokens_per_s"]) - WARMUP
    assert row["tokens_per_s"] > 0 and math.isfinite(row["tokens_per_s"])
    # the median is over the timed iterations only: it lies within their range
    timed = result["tokens_per_s"][WARMUP:]
    assert min(timed) <= row["tokens_per_s"] <= max(timed)
    # warm-up time = the left-out iterations' tokens over their rates
    assert row["warmup_s"] == pytest.approx(sum(tokens_per_iter / s for s in result["tokens_per_s"][:WARMUP]))
    assert row["mfu"] is None  # a CPU has no datasheet peak, so no MFU rather than a made-up one
    # 6 small steps from a random init: the loss is still near ln(50304), the uniform guess
    assert abs(row["final_loss"] - math.log(50304)) < 1.0
    assert row["peak_rss_mib"] > 50 and row["wall_s"] > 0


@pytest.mark.parametrize(
    "with_nanogpt",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(not NANOGPT_DIR, reason="set NOISYLM_NANOGPT_DIR to a nanoGPT clone"),
        ),
    ],
)
def test_smoke_produces_table_and_json(tmp_path, with_nanogpt):
    extra = ("--nanogpt-dir", NANOGPT_DIR) if with_nanogpt else ()
    proc = run_smoke(tmp_path, *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "bench_gpu.json").read_text())
    table_md = (tmp_path / "bench_gpu.md").read_text()
    assert table_md in proc.stdout  # the printed table is the written one

    sides = ["nanoGPT", "noisylm"] if with_nanogpt else ["noisylm"]
    assert list(record["table"]) == sides
    cfg = record["config"]
    assert (cfg["device"], cfg["dtype"], cfg["compile"], cfg["iters"]) == ("cpu", "float32", False, ITERS)
    tokens_per_iter = cfg["batch_size"] * cfg["grad_accum"] * cfg["block_size"]
    for side in sides:
        check_side(record["raw"][side], record["table"][side], tokens_per_iter)
        assert f"| {side} |" in table_md
    assert record["provenance"]["config"] == cfg and "torch" in record["provenance"]["versions"]
    # noisylm ran the gpt2-124m preset (resized to the smoke model) for all ITERS iterations
    assert record["raw"]["noisylm"]["iters"] == list(range(1, ITERS + 1))
    assert record["raw"]["noisylm"]["settings"]["model"] == "gpt2-124m"
    if with_nanogpt:
        assert record["raw"]["nanoGPT"]["iters"] == list(range(ITERS))  # same number of steps
        ratio = record["table"]["noisylm"]["tokens_per_s"] / record["table"]["nanoGPT"]["tokens_per_s"]
        assert f"| {ratio:.2f}x |" in table_md
        # same model, data and schedule: the losses agree within sampling noise
        losses = [record["table"][s]["final_loss"] for s in sides]
        assert abs(losses[0] - losses[1]) < 0.5
    else:
        assert "| n/a |" in table_md  # no reference, no ratio


def test_bad_nanogpt_dir_is_one_clear_line(tmp_path):
    proc = run_smoke(tmp_path, "--nanogpt-dir", str(tmp_path / "missing"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"{tmp_path / 'missing'} has no train.py; pass --nanogpt-dir pointing to a nanoGPT clone"
    ]
    assert not (tmp_path / "bench_gpu.json").exists()
