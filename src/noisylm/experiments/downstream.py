"""The downstream stage of a sweep (the paper's Table 1 at sweep scale): noisy pre-training -> frozen
features -> probes trained with CE and CE + L_gm.

`downstream_stage(sweep_dir)` extracts mean-pooled features of every (finished) run's final checkpoint
on a labelled task (`noisylm.probing.extract` with the backbone ``noisylm:RUN_DIR``) and probes them
at one fixed recipe with a few seeds (`noisylm.probing.probe`), then writes

    SWEEP/downstream/
      features/<run>/     the feature cache of each run (reused when its settings match)
      probe/<run>/        each run's probe (results.jsonl has every seed's test accuracy)
      table1.md/.csv      rows: clean, each noisy grid point, each also + L_gm; columns: task x head;
                          test accuracy mean ± std over seeds (and replicates)
      differences.md/.csv each noisy run's accuracy minus the clean run's, and CE + L_gm minus CE,
                          paired by replicate and probe seed, with the 95% t interval
      downstream.json     all of it, the config and provenance (`noisylm report` draws its section)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
import threading
from concurrent.futures import Executor, Future, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_write_json, atomic_write_text, provenance, read_json, read_jsonl
from noisylm.errors import NoisyLMError
from noisylm.experiments.config import DownstreamConfig
from noisylm.experiments.replicates import paired_interval
from noisylm.experiments.rundir import SweepDir, SweepRun
from noisylm.workers import sigint_blocked, worker_pool

DOWNSTREAM_FORMAT = "noisylm-downstream/1"
Accuracies = dict[tuple[str, str], dict[int, float]]  # (head, loss) -> probe seed -> test accuracy %
TRAINED_ON_NOTE = (
    "The passages come from the texts the models were pre-trained on: the task measures what each "
    "representation keeps about its training text, not generalisation to unseen text."
)


def downstream_stage(
    sweep_dir: str | os.PathLike,
    config: DownstreamConfig | None = None,
    *,
    log: bool = True,
    jobs: int | None = None,
    done: dict[str, Accuracies] | None = None,
) -> dict[str, Any]:
    """Extract, probe and tabulate every selected finished run of ``sweep_dir``; return (and write to
    ``downstream/downstream.json``) the tables. ``config``: None = the sweep config's ``[downstream]``
    section (or the defaults when it has none). ``jobs``: runs processed at once, each in its own
    process with one thread; None = the sweep's ``parallel`` (the results do not depend on it).
    ``done``: runs already probed with this config while the sweep trained (`EarlyProbes`)."""
    sweep = SweepDir.open(sweep_dir)
    if config is None:
        values = sweep.config.get("downstream")
        config = DownstreamConfig(**values) if isinstance(values, dict) else DownstreamConfig()
    selected = [r for r in sweep.runs if _selected(r, config)]
    runs = [r for r in selected if r.status == "finished"]
    skipped = [r.name for r in selected if r.status != "finished"]
    if not runs:
        raise NoisyLMError(f"no finished run in {sweep.path} to probe; run or resume the sweep first")
    out = sweep.path / "downstream"
    data = _load_task(config)
    if jobs is None:
        jobs = int(sweep.config.get("parallel") or 1)
    accuracies = {run.name: done[run.name] for run in runs if done and run.name in done}
    for index, name in enumerate(accuracies, 1):
        _log_done(log, index, len(runs), f"{name} (while the sweep trained)")
    tasks = [_task(run, data, out, config) for run in runs if run.name not in accuracies]
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            accuracies[task[0].name] = _features_and_probe(*task)
            _log_done(log, len(accuracies), len(runs), task[0].name)
    elif tasks:
        # Spawned workers with one thread each: both cores of a small CPU.
        with worker_pool(min(jobs, len(tasks)), threads=1) as pool:
            with sigint_blocked():
                futures = {pool.submit(_features_and_probe, *task): task[0].name for task in tasks}
            for future in as_completed(futures):
                accuracies[futures[future]] = future.result()
                _log_done(log, len(accuracies), len(runs), futures[future])
    accuracies = {run.name: accuracies[run.name] for run in runs}  # the runs' order, not finishing order
    majority = float(np.bincount(data.splits["test"].labels).max() / len(data.splits["test"]))
    result = {
        "format": DOWNSTREAM_FORMAT,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "test_examples": len(data.splits["test"]),
        "majority_rate": majority,
        "config": dataclasses.asdict(config),
        "runs": [r.name for r in runs],
        "skipped": skipped,
        "table1": table1_rows(sweep, runs, accuracies, config, data.name),
        "differences": accuracy_differences(sweep, runs, accuracies, config),
        "accuracies": {
            name: [
                {"head": h, "loss": loss, "seed": s, "test_acc": a}
                for (h, loss), by in cells.items()
                for s, a in sorted(by.items())
            ]
            for name, cells in accuracies.items()
        },
        "provenance": provenance(dataclasses.asdict(config), config.split_seed),
    }
    _write_tables(out, result)
    atomic_write_json(out / "downstream.json", result)
    return result


class EarlyProbes:
    """A sweep's downstream work, started in its worker processes as soon as each selected run has
    trained, so that a core which would wait for the last training runs probes instead.
    `run_finished` (from any thread) submits a run's features and probes; `results` waits for them,
    for `downstream_stage`'s ``done``. The numbers are those of the stage run afterwards: the same
    task, one thread a process, the same settings."""

    def __init__(self, sweep_dir: Path, config: DownstreamConfig, workers: Executor) -> None:
        self.sweep_dir, self.config, self.workers = Path(sweep_dir), config, workers
        self._data: Any = None
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()

    def run_finished(self, name: str) -> None:
        run = next((r for r in SweepDir.open(self.sweep_dir).runs if r.name == name), None)
        if run is None or run.status != "finished" or not _selected(run, self.config):
            return
        with self._lock:
            if self._data is None:
                self._data = _load_task(self.config)
            task = _task(run, self._data, self.sweep_dir / "downstream", self.config)
            try:
                with sigint_blocked():
                    self._futures[name] = self.workers.submit(_features_and_probe, *task)
            except BrokenProcessPool:  # a worker died (its runs say so): the stage probes this run later
                pass

    def results(self) -> dict[str, Accuracies]:
        """The probed runs' accuracies; a run whose worker died is left to `downstream_stage`."""
        done = {}
        for name, future in self._futures.items():
            try:
                done[name] = future.result()
            except BrokenProcessPool:
                continue
        return done


def _selected(run: SweepRun, config: DownstreamConfig) -> bool:
    return not config.runs or run.point in config.runs or run.name in config.runs


def _load_task(config: DownstreamConfig) -> Any:
    from noisylm.probing.datasets import load_dataset

    return load_dataset(
        config.dataset, seed=config.split_seed, max_train=config.max_train, max_test=config.max_test
    )


def _task(run: SweepRun, data: Any, out: Path, config: DownstreamConfig) -> tuple:
    return (run, data, out / "features" / run.name, out / "probe" / run.name, config)


def _log_done(log: bool, index: int, total: int, name: str) -> None:
    if log:
        print(f"[downstream {index}/{total}] {name}: features probed", file=sys.stderr, flush=True)


def _features_and_probe(
    run: SweepRun, data: Any, cache: Path, probe_out: Path, config: DownstreamConfig
) -> Accuracies:
    """One run's share of the stage (a worker's task): its feature cache, then its probes."""
    return _probe(_features(run, data, cache, config), probe_out, config)


def _features(run: SweepRun, data: Any, cache: Path, config: DownstreamConfig) -> Path:
    """The run's feature cache: reused when it was made from this run with the same settings."""
    from noisylm.probing.features import extract

    wanted = {
        "dataset": data.name,
        "pooling": config.pooling,
        "splits": {s: len(data.splits[s]) for s in ("train", "val", "test")},
    }
    meta_path = cache / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path, "feature cache")
        if all(meta.get(k) == v for k, v in wanted.items()) and (cache / ".run_mtime").is_file():
            stamp = (cache / ".run_mtime").read_text().strip()
            if stamp == _run_stamp(run):
                return cache
    extract(
        f"noisylm:{run.run_dir}",
        data,
        cache,
        overwrite=True,
        progress=False,
        pooling=config.pooling,
        max_length=config.max_length,
        batch_size=config.extract_batch_size,
        device=config.device,
        seed=config.split_seed,
    )
    atomic_write_text(cache / ".run_mtime", _run_stamp(run) + "\n")
    return cache


def _run_stamp(run: SweepRun) -> str:
    """Which training the features came from: the run's summary.json (rewritten when it retrains)."""
    path = run.run_dir / "summary.json"
    return str(path.stat().st_mtime_ns) if path.is_file() else "none"


def _probe(cache: Path, out: Path, config: DownstreamConfig) -> Accuracies:
    """Probe one cache at the fixed recipe; (head, loss) -> seed -> test accuracy in percent (the
    probe's results.jsonl holds fractions)."""
    from noisylm.probing.protocol import ProbeConfig, probe

    probe_config = ProbeConfig(
        heads=tuple(config.heads),
        losses=tuple(config.losses),
        preset="quick",
        epochs=config.epochs,
        lrs=(config.lr,),
        batch_sizes=(config.batch_size,),
        gammas=(config.gamma,),
        lams=(config.lam,),
        seeds=config.seeds,
        figure6=False,
        logreg=False,  # Table 1 compares probes; the reference fit would double the stage's time
        device=config.device,
        progress=False,
    )
    probe([cache], out, probe_config, overwrite=True)
    cells: Accuracies = {}
    for record in read_jsonl(out / "results.jsonl"):
        if record.get("phase") == "final":
            cells.setdefault((record["head"], record["loss"]), {})[int(record["seed"])] = 100.0 * float(
                record["test_acc"]
            )
    return cells


def _label(point_run: SweepRun) -> str:
    return "clean (α = 0)" if point_run.kind is None else f"{point_run.kind} α = {point_run.alpha:g}"


def table1_rows(
    sweep: SweepDir,
    runs: list[SweepRun],
    accuracies: dict[str, Accuracies],
    config: DownstreamConfig,
    dataset: str,
) -> list[dict[str, Any]]:
    """Table 1's layout: one row per grid point and loss (CE, then + L_gm), one column per task x head;
    each cell the test accuracy's mean ± std over the probe seeds of all the point's replicates."""
    rows = []
    probed = {r.name for r in runs}
    for point in sweep.points:
        members = [r for r in sweep.replicate_runs(point) if r.name in probed]
        if not members:
            continue
        for loss in config.losses:
            row: dict[str, Any] = {
                "run": point,
                "model": _label(members[0]) + ("" if loss == "ce" else f" + {loss}"),
            }
            for head in config.heads:
                values = [a for r in members for a in accuracies[r.name].get((head, loss), {}).values()]
                row[f"{dataset} {head}"] = _mean_std(values)
            row["replicates"] = len(members)
            rows.append(row)
    return rows


def accuracy_differences(
    sweep: SweepDir,
    runs: list[SweepRun],
    accuracies: dict[str, Accuracies],
    config: DownstreamConfig,
) -> list[dict[str, Any]]:
    """Each noisy run's test accuracy minus its replicate's clean run's, paired by probe seed (points
    are percentage points), per head and loss; then each penalised loss minus CE on every grid point's
    features; each with the 95% t interval over the (replicate, seed) pairs."""
    rows = []
    probed = {r.name: r for r in runs}
    for point in sweep.points:
        members = [r for r in sweep.replicate_runs(point) if r.name in probed and r.kind is not None]
        for head in config.heads:
            for loss in config.losses:
                diffs = []
                for run in members:
                    clean = sweep.clean_of(run)
                    if clean is None or clean.name not in probed:
                        continue
                    mine = accuracies[run.name].get((head, loss), {})
                    theirs = accuracies[clean.name].get((head, loss), {})
                    diffs += [mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))]
                if diffs:
                    rows.append(_difference_row(f"{point} vs clean", head, loss, diffs))
    # The paper's other comparison: each penalised loss against CE on the same features, paired by
    # replicate and probe seed (seed s of both starts from the same head and sees the same batches).
    for point in sweep.points:
        members = [r for r in sweep.replicate_runs(point) if r.name in probed]
        for head in config.heads:
            for loss in [name for name in config.losses if name != "ce"]:
                diffs = []
                for run in members:
                    mine = accuracies[run.name].get((head, loss), {})
                    ce = accuracies[run.name].get((head, "ce"), {})
                    diffs += [mine[s] - ce[s] for s in sorted(set(mine) & set(ce))]
                if diffs:
                    rows.append(_difference_row(f"{point}: {loss} vs ce", head, loss, diffs))
    return rows


def _difference_row(comparison: str, head: str, loss: str, diffs: list[float]) -> dict[str, Any]:
    stat = paired_interval(diffs)
    return {
        "comparison": comparison,
        "head": head,
        "loss": loss,
        "pairs": stat.n,
        "mean": stat.mean,
        "low": stat.low,
        "high": stat.high,
        "within_noise": stat.within_noise,
    }


def _mean_std(values: list[float]) -> dict[str, float | int] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "n": len(array),
    }


def cell_text(cell: dict[str, Any] | None) -> str:
    return "–" if cell is None else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def difference_text(row: dict[str, Any]) -> tuple[str, str]:
    """(interval, verdict) of one accuracy difference row, in percentage points."""
    if row["low"] is None:
        return "1 pair: no interval", "–"
    verdict = "within noise" if row["within_noise"] else "0 outside the interval"
    return f"[{row['low']:+.2f}, {row['high']:+.2f}]", verdict


def table1_markdown(result: dict[str, Any]) -> list[str]:
    rows = result["table1"]
    columns = [c for c in rows[0] if c not in ("run", "model", "replicates")] if rows else []
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(cell_text(row[c]) for c in columns) + " |")
    return lines


def differences_markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "| comparison | head | loss | pairs | mean (points) | 95% interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["differences"]:
        interval, verdict = difference_text(row)
        lines.append(
            f"| {row['comparison']} | {row['head']} | {row['loss']} | {row['pairs']} | {row['mean']:+.2f} | "
            f"{interval} | {verdict} |"
        )
    return lines


def _write_tables(out: Path, result: dict[str, Any]) -> None:
    caption = (
        f"Test accuracy (%) of probes on frozen features of each run, task `{result['dataset']}` "
        f"({result['num_classes']} classes, {result['test_examples']} test passages; majority class "
        f"{result['majority_rate']:.1%}): mean ± std over probe seeds."
    )
    atomic_write_text(out / "table1.md", caption + "\n\n" + "\n".join(table1_markdown(result)) + "\n")
    atomic_write_text(
        out / "differences.md",
        "Accuracy of each noisy run minus the clean run of its replicate, then of CE + L_gm minus CE on "
        "each run's features (percentage points), paired by replicate and probe seed, with the 95% t "
        "interval.\n\n" + "\n".join(differences_markdown(result)) + "\n",
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    rows = result["table1"]
    columns = [c for c in rows[0] if c not in ("run", "model", "replicates")] if rows else []
    writer.writerow(["run", "model", *[f"{c} mean" for c in columns], *[f"{c} std" for c in columns]])
    for row in rows:
        means = ["" if row[c] is None else f"{row[c]['mean']:.4f}" for c in columns]
        stds = ["" if row[c] is None else f"{row[c]['std']:.4f}" for c in columns]
        writer.writerow([row["run"], row["model"], *means, *stds])
    atomic_write_text(out / "table1.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["comparison", "head", "loss", "pairs", "mean", "low", "high", "within_noise"])
    for row in result["differences"]:
        writer.writerow(
            [
                "" if row[k] is None else row[k]
                for k in ["comparison", "head", "loss", "pairs", "mean", "low", "high", "within_noise"]
            ]
        )
    atomic_write_text(out / "differences.csv", buffer.getvalue())


def report_text(result: dict[str, Any]) -> str:
    """The section's explanation (the note on training text for the bundled task)."""
    text = (
        f"Probes on frozen mean-pooled features of each run's final checkpoint, task "
        f"`{result['dataset']}` ({result['num_classes']} classes; majority class "
        f"{result['majority_rate']:.1%} of the test split), trained with CE and CE + L_gm "
        f"at one fixed recipe "
        f"(lr {result['config']['lr']:g}, batch {result['config']['batch_size']}, "
        f"{result['config']['epochs']} epochs, {result['config']['seeds']} seeds)."
    )
    if result["dataset"] == "shakespeare-plays":
        text += " " + TRAINED_ON_NOTE
    if result.get("skipped"):
        text += f" Not probed (not finished): {', '.join(result['skipped'])}."
    return text
