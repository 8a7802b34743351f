"""Live progress of a sweep: every running run (iteration / total, loss, tokens/s, ETA) and the sweep as
a whole, read from each run's ``metrics.jsonl`` (the runs may train in other processes).

`SweepProgress` polls the running runs from a background thread. In a terminal it draws one tqdm bar per
running run and one for the sweep; elsewhere (a log file, CI) it prints plain lines, no carriage
returns: a line for a run when it passes another ``step`` of its iterations (10%) or, at most, once
every ``interval_s`` seconds while it moves.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from noisylm.experiments.rundir import read_run_metrics


@dataclass(frozen=True)
class RunProgress:
    """Where one run stands, from the last train line of its ``metrics.jsonl``."""

    name: str
    iter: int
    total: int
    loss: float | None
    tokens_per_s: float | None
    tokens_per_iter: float | None

    @property
    def fraction(self) -> float:
        return min(self.iter / self.total, 1.0) if self.total > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current speed (None until the speed is known)."""
        if not self.tokens_per_s or not self.tokens_per_iter:
            return None
        return max(self.total - self.iter, 0) * self.tokens_per_iter / self.tokens_per_s


TAIL_BYTES = 1 << 16  # a poll reads this much of the end of metrics.jsonl, not the whole file


def _last_train_line(run_dir: Path) -> dict[str, Any] | None:
    """The last train line of ``run_dir/metrics.jsonl``, read from the file's end: polled every few
    seconds for every running run, it must not re-parse a paper-length run's whole log each time."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(size - TAIL_BYTES, 0))
            tail = fh.read()
    except FileNotFoundError:
        return None
    lines = tail.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line of the tail may be cut
    for raw in reversed(lines):
        try:
            record = json.loads(raw)
        except ValueError:  # empty, or a torn last line of a run being written
            continue
        if isinstance(record, dict) and "train_loss" in record:
            return record
    if size > TAIL_BYTES:  # only eval lines at the end: fall back to the whole file
        lines_all = [m for m in read_run_metrics(run_dir) if "train_loss" in m]
        return lines_all[-1] if lines_all else None
    return None


def read_progress(name: str, run_dir: Path, total: int) -> RunProgress:
    """A run's progress now (iteration 0 before its first train line)."""
    last = _last_train_line(run_dir)
    if last is None:
        return RunProgress(name, 0, total, None, None, None)
    it = int(last["iter"])
    return RunProgress(
        name,
        it,
        total,
        float(last["train_loss"]),
        float(last["tokens_per_s"]) if last.get("tokens_per_s") else None,
        float(last["tokens"]) / it if it > 0 and last.get("tokens") else None,
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def describe(run: RunProgress) -> str:
    """``iter 120/600 (20%), loss 2.3412, 12,345 tok/s, ETA 3m05s``."""
    parts = [f"iter {run.iter}/{run.total} ({run.fraction:.0%})"]
    if run.loss is not None:
        parts.append(f"loss {run.loss:.4f}")
    if run.tokens_per_s:
        parts.append(f"{run.tokens_per_s:,.0f} tok/s")
    parts.append(f"ETA {format_duration(run.eta_s)}")
    return ", ".join(parts)


class SweepProgress:
    """Progress of the runs of one sweep launch; ``start``/``finish`` each run, ``poll`` (or the thread
    of ``running()``) reads and shows them."""

    def __init__(
        self,
        total_runs: int,
        *,
        done_runs: int = 0,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        interval_s: float = 30.0,
        step: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.total_runs, self.done_runs = total_runs, done_runs
        self.interval_s, self.step, self.clock = interval_s, step, clock
        self._active: dict[str, tuple[Path, int]] = {}
        self._shown: dict[str, tuple[float, int, int]] = {}  # name -> (time, iter, step index) printed
        self._bars: dict[str, Any] = {}
        self._sweep_bar: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # The runs -------------------------------------------------------------------------------------

    def start(self, name: str, run_dir: Path, total_iters: int) -> None:
        with self._lock:
            self._active[name] = (Path(run_dir), int(total_iters))

    def finish(self, name: str, status: str = "finished") -> None:
        """The run ended (``status`` as `run_status` says); in a log, one closing line for it."""
        with self._lock:
            entry = self._active.pop(name, None)
            self._shown.pop(name, None)
            self.done_runs += 1
            if entry is not None and not self.terminal:
                run = read_progress(name, *entry)
                others = [read_progress(other, *where) for other, where in self._active.items()]
                whole = self.sweep_fraction(others)  # the runs still going count their share
                self.stream.write(
                    f"[progress] {name}: {status} at iter {run.iter}/{run.total} | sweep "
                    f"{self.done_runs}/{self.total_runs} runs done, {whole:.0%}\n"
                )
                self.stream.flush()
            bar = self._bars.pop(name, None)
            if bar is not None:
                bar.close()

    def snapshot(self) -> list[RunProgress]:
        with self._lock:
            active = dict(self._active)
        return [read_progress(name, run_dir, total) for name, (run_dir, total) in active.items()]

    def sweep_fraction(self, runs: list[RunProgress]) -> float:
        """Done runs plus the running runs' shares, over all runs of this launch."""
        if self.total_runs <= 0:
            return 1.0
        return min((self.done_runs + sum(r.fraction for r in runs)) / self.total_runs, 1.0)

    # Showing them ---------------------------------------------------------------------------------

    def poll(self) -> None:
        runs = self.snapshot()
        with self._lock:
            if self.terminal:
                self._draw_bars(runs)
            else:
                self._print_lines(runs)

    def _print_lines(self, runs: list[RunProgress]) -> None:
        now = self.clock()
        whole = self.sweep_fraction(runs)
        for run in runs:
            if run.name not in self._active:
                continue
            last_time, last_iter, last_step = self._shown.get(run.name, (-math.inf, -1, -1))
            step_index = int(run.fraction / self.step + 1e-9) if self.step > 0 else 0
            moved = run.iter != last_iter
            due = now - last_time >= self.interval_s
            if moved and (step_index > last_step or due):
                self.stream.write(
                    f"[progress] {run.name}: {describe(run)} | sweep {self.done_runs}/{self.total_runs} runs "
                    f"done, {whole:.0%}\n"
                )
                self._shown[run.name] = (now, run.iter, step_index)
        self.stream.flush()

    def _draw_bars(self, runs: list[RunProgress]) -> None:
        from tqdm import tqdm

        if self._sweep_bar is None:
            self._sweep_bar = tqdm(
                total=1000, desc="sweep", position=0, file=self.stream, bar_format="{desc} {bar} {postfix}"
            )
        self._sweep_bar.n = int(1000 * self.sweep_fraction(runs))
        self._sweep_bar.set_postfix_str(f"{self.done_runs}/{self.total_runs} runs done", refresh=False)
        self._sweep_bar.refresh()
        for run in runs:
            if run.name not in self._active:
                continue
            bar = self._bars.get(run.name)
            if bar is None:
                position = 1 + len(self._bars)
                bar = tqdm(total=run.total, desc=run.name, position=position, leave=False, file=self.stream)
                self._bars[run.name] = bar
            bar.n = run.iter
            postfix = describe(run).split(", ", 1)[1] if ", " in describe(run) else ""
            bar.set_postfix_str(postfix, refresh=False)
            bar.refresh()

    # The thread ------------------------------------------------------------------------------------

    def __enter__(self) -> SweepProgress:
        period = 0.5 if self.terminal else min(self.interval_s, 2.0)
        self._thread = threading.Thread(target=self._loop, args=(period,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            if self._sweep_bar is not None:
                self._sweep_bar.close()
            self._bars.clear()

    def _loop(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.poll()
            except Exception:  # a half-written file or a closed stream must not kill the sweep
                continue
