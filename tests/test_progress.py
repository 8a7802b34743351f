"""Live sweep progress: the plain lines written to a log (no carriage returns, a bounded number)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from noisylm.experiments import sweep
from noisylm.experiments.progress import SweepProgress, read_progress

pytest_plugins = ["sweep_fixtures"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log_train(run_dir: Path, it: int, loss: float, tokens_per_iter: int = 512, tps: float = 1000.0) -> None:
    """A train line as the trainer writes it (docs/contracts.md)."""
    line = {"iter": it, "tokens": it * tokens_per_iter, "clean_tokens": it * tokens_per_iter, "lr": 1e-3}
    line |= {"train_loss": loss, "tokens_per_s": tps, "mfu": None}
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def test_log_lines_are_plain_and_rate_limited(tmp_path):
    stream, clock = io.StringIO(), Clock()
    board = SweepProgress(2, stream=stream, terminal=False, interval_s=30.0, step=0.1, clock=clock)
    runs = {name: tmp_path / name for name in ("clean", "uniform-a0.05")}
    for name, run_dir in runs.items():
        run_dir.mkdir()
        board.start(name, run_dir, 200)
    for it in range(1, 201):  # a poll every second of the clock, a train line every iteration
        clock.now += 1.0
        for run_dir in runs.values():
            _log_train(run_dir, it, 3.0 - it / 100)
        board.poll()
    for name in runs:
        board.finish(name)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    for name in runs:
        mine = [line for line in lines if line.startswith(f"[progress] {name}:")]
        # One line per 10% of the run (11 marks, 0% to 100%) plus one each 30 s at most, and a closing line.
        assert len(mine) <= 11 + 200 // 30 + 1
        assert len(mine) >= 10
        assert mine[-1].startswith(f"[progress] {name}: finished at iter 200/200")
    first = next(line for line in lines if "iter 100/200" in line)
    # ETA = remaining iterations x tokens per iteration / tokens per second = 100 x 512 / 1000 s.
    assert "(50%)" in first and "loss 2.0000" in first and "1,000 tok/s" in first and "ETA 0m51s" in first
    closing = [line for line in lines if "finished at iter" in line]
    # The first closing line counts the other run's share too (it is at 200/200 as well).
    assert closing[0].endswith("sweep 1/2 runs done, 100%")
    assert lines[-1].endswith("sweep 2/2 runs done, 100%")


def test_progress_of_a_run_before_its_first_line(tmp_path):
    run = read_progress("clean", tmp_path, 50)
    assert (run.iter, run.fraction, run.eta_s, run.loss) == (0, 0.0, None, None)


def test_a_sweep_logs_its_progress(tmp_path, tiny_config, capsys):
    config = tiny_config()
    config.noise = config.noise[:1]
    config.domains = {}
    config.parallel = 2
    config.train = {**config.train, "max_iters": 6, "log_interval": 1}
    summary = sweep(config, tmp_path / "sweep", progress=True)
    assert summary["counts"]["finished"] == 3
    err = capsys.readouterr().err
    assert "\r" not in err
    for name in ("clean", "uniform-a0.05", "uniform-a0.2"):
        assert re.search(
            rf"\[progress\] {re.escape(name)}: finished at iter 6/6 \| sweep \d/3 runs done", err
        )
    assert "sweep 3/3 runs done, 100%" in err
