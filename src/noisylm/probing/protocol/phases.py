"""The protocol: `probe()` and its three phases (selection, final runs, Table 6), run by a session
that reuses an interrupted probe's finished runs and records each new one as it finishes."""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from noisylm.artifacts import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir, provenance
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.protocol.config import ProbeConfig
from noisylm.probing.protocol.data import ProbeData, load_probe_data
from noisylm.probing.protocol.figures import figure6
from noisylm.probing.protocol.resume import claim_partial, partial_dir, probe_state, spec_key
from noisylm.probing.protocol.tables import write_tables
from noisylm.probing.protocol.training import RunSpec, Task, load_init_head, run_ids
from noisylm.probing.protocol.workers import InProcess, WorkerPool
from noisylm.runtime import resolve_device, torch_threads


def probe(
    caches: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    config: ProbeConfig | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Probe heads on one or more feature caches; write results, tables and figures to ``out_dir``.

    Each finished run is appended at once to ``<out_dir>.partial/results.jsonl``; ``out_dir`` is
    written at the end. ``resume``: continue the probe interrupted in ``<out_dir>.partial/`` (it must
    have been started with the same config and caches, ``jobs`` aside), reusing its finished runs.
    ``config.jobs`` > 1 trains the runs of each phase in that many worker processes. ``overwrite``:
    replace an existing ``out_dir`` and, without ``resume``, discard an interrupted probe's state.

    Returns the summary (also written to ``out_dir/summary.json``): ``rows`` with one entry per
    (backbone, dataset, head, loss), ``sensitivity`` rows, ``figure6`` stats, ``reused_runs`` (runs
    taken from the interrupted probe), ``seconds``.
    """
    config = config or ProbeConfig()
    caches = [caches] if isinstance(caches, str | Path) else list(caches)
    if not caches:
        raise UsageError("no feature caches given; pass at least one directory made by `noisylm extract`")
    # All bad input is found before anything is written or trained.
    datasets = [load_probe_data(cache) for cache in caches]
    init_state, init_sha256 = None, None
    if config.init_head is not None:
        init_state, init_sha256 = load_init_head(config.init_head, config.heads[0], datasets)
    device = resolve_device(config.device)
    partial = partial_dir(out_dir)
    if resume and not overwrite and Path(out_dir).exists() and not partial.exists():
        raise NoisyLMError(
            f"output {out_dir} already exists and holds no interrupted probe ({partial} is absent), so "
            "there is nothing to resume; pass --overwrite to run it again"
        )
    out = check_output_dir(out_dir, overwrite)
    state = probe_state(config, device, datasets, init_sha256)
    finished = claim_partial(partial, state, resume=resume, overwrite=overwrite)

    started = time.perf_counter()
    figure_stats: dict[str, Any] | None = None
    trainer: InProcess | WorkerPool
    if config.jobs == 1:
        trainer = InProcess(datasets, device, init_state)
    else:
        fingerprints = [cache["sha256"] for cache in state["caches"]]
        trainer = WorkerPool(config, datasets, fingerprints, device, init_state, partial)
    session = _Session(config, datasets, trainer, finished, partial / "results.jsonl")
    try:
        with session, trainer, torch_threads(config.threads):
            rows, sensitivity_rows = _protocol(session, datasets)
            if config.figure6:
                # Figure 6 needs the heads themselves, so its three runs are trained again on resume.
                figure_records: list[dict[str, Any]] = []
                figure_stats = figure6(
                    datasets[0], config, rows, device, partial / "figure6.png", figure_records,
                    init_state=init_state,
                )  # fmt: skip
                for record in figure_records:
                    session.append(record)
        summary = {
            "rows": rows,
            "sensitivity": sensitivity_rows,
            "figure6": figure_stats,
            "reused_runs": session.reused,
            "seconds": round(time.perf_counter() - started, 2),
            "provenance": provenance(asdict(config)),
        }
        with atomic_dir(out, overwrite=overwrite) as tmp:
            atomic_write_json(
                tmp / "probe.json",
                {
                    "config": asdict(config),
                    "caches": [str(c) for c in caches],
                    "init_head_sha256": init_sha256,
                    "provenance": provenance(asdict(config)),
                },
            )
            atomic_write_text(tmp / "results.jsonl", "".join(json.dumps(r) + "\n" for r in session.records))
            atomic_write_json(tmp / "summary.json", summary)
            write_tables(tmp, rows, sensitivity_rows, config)
            if config.figure6:
                shutil.copyfile(partial / "figure6.png", tmp / "figure6.png")
    except BaseException:
        if not session.written and not finished:  # nothing finished: no state worth resuming
            shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return summary


class _Session:
    """The runs of one probe: each is reused from an interrupted probe when its spec matches a finished
    run there, else handed to the trainer and appended to the progress file as soon as it finishes."""

    def __init__(
        self,
        config: ProbeConfig,
        datasets: list[ProbeData],
        trainer: InProcess | WorkerPool,
        finished: list[dict[str, Any]],
        progress_path: Path,
    ) -> None:
        self.config, self.datasets, self.trainer = config, datasets, trainer
        # In protocol order (the order of the tasks given to `run`), whatever order the runs finish in.
        self.records: list[dict[str, Any]] = []
        self.reused = 0
        self.written = 0  # lines this probe added to the progress file
        # Per spec, a queue: two caches with the same backbone/dataset names are consumed in order.
        self._finished: dict[tuple, list[dict[str, Any]]] = {}
        for record in finished:
            self._finished.setdefault(spec_key(record), []).append(record)
        self._progress_path = progress_path
        self._progress: Any = None
        self.bar: Any = None

    def __enter__(self) -> _Session:
        # Unbuffered appends: each line reaches the file in one write as soon as its run is done.
        self._progress = open(self._progress_path, "ab", buffering=0)  # noqa: SIM115
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        self._progress.close()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        self._progress.write((json.dumps(record) + "\n").encode("utf-8"))
        self.written += 1

    def run(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """The records of ``tasks``, in their order: val accuracy, and test accuracy unless the phase is
        "select". The runs not reused are trained by the trainer (one by one, or several at once)."""
        done: dict[int, dict[str, Any]] = {}
        todo: list[tuple[int, Task, dict[str, Any]]] = []
        for i, task in enumerate(tasks):
            ids = {
                "phase": task.phase,
                **run_ids(self.datasets[task.cache], task.spec.head, task.spec.loss),
                **{k: v for k, v in asdict(task.spec).items() if k not in ("head", "loss")},
                "init_head": self.config.init_head,
                "epochs": task.recipe.epochs,
            }
            queue = self._finished.get(spec_key(ids))
            if queue:
                done[i] = queue.pop(0)  # already in the progress file
                self.reused += 1
                self.bar.update(1)
            else:
                todo.append((i, task, ids))
        # This process is the only writer of the progress file: one line per run as it finishes.
        for i, record in self.trainer.train(todo):
            self._write(record)
            done[i] = record
            self.bar.update(1)
        ordered = [done[i] for i in range(len(tasks))]
        self.records.extend(ordered)
        return ordered


def _grid(config: ProbeConfig, head: str, loss: str) -> list[tuple[float, int, float, float]]:
    """The (lr, batch size, γ, λ) points searched on validation; γ = λ = 0 for plain CE."""
    recipe, penalised = config.recipe(head), loss != "ce"
    return list(
        itertools.product(
            recipe.lrs,
            recipe.batch_sizes,
            config.gammas if penalised else (0.0,),
            config.lams if penalised else (0.0,),
        )
    )


def _protocol(session: _Session, datasets: list[ProbeData]) -> tuple[list[dict], list[dict]]:
    """The protocol in three phases, each a list of independent runs that the session's trainer may run
    at once: selection runs of every cache × head × loss, then the final runs at each selected
    setting, then the Table 6 runs (at lgm's selected lr/batch)."""
    config = session.config
    session.bar = _progress_bar(config, datasets)
    alpha = config.anchor_weight
    cells = [(c, head, loss) for c in range(len(datasets)) for head in config.heads for loss in config.losses]
    grids = {cell: _grid(config, cell[1], cell[2]) for cell in cells}

    def task(
        c: int, head: str, loss: str, point: tuple[float, int, float, float], seed: int, phase: str
    ) -> Task:
        return Task(c, RunSpec(head, loss, *point, seed, alpha), config.recipe(head), phase)

    # 1. Selection: each grid point scores its mean validation accuracy over `select_seeds` seeds.
    records = iter(
        session.run(
            [
                task(c, head, loss, point, seed, "select")
                for c, head, loss in cells
                for point in grids[c, head, loss]
                for seed in range(config.select_seeds)
            ]
        )
    )
    chosen: dict[tuple[int, str, str], tuple[tuple[float, int, float, float], float]] = {}
    for cell in cells:
        best_val, best = -1.0, grids[cell][0]
        for point in grids[cell]:
            score = statistics.fmean(next(records)["val_acc"] for _ in range(config.select_seeds))
            if score > best_val:  # ties keep the earlier (smaller) setting
                best_val, best = score, point
        chosen[cell] = best, best_val

    # 2. The selected setting of every cell with `seeds` seeds.
    records = iter(
        session.run(
            [
                task(c, head, loss, chosen[c, head, loss][0], seed, "final")
                for c, head, loss in cells
                for seed in range(config.seeds)
            ]
        )
    )
    rows = []
    for c, head, loss in cells:
        (lr, batch_size, gamma, lam), best_val = chosen[c, head, loss]
        finals = [next(records) for _ in range(config.seeds)]
        penalised = loss != "ce"
        rows.append(
            {
                **run_ids(datasets[c], head, loss),
                "lr": lr,
                "batch_size": batch_size,
                "gamma": gamma if penalised else None,
                "lam": lam if penalised else None,
                "epochs": config.recipe(head).epochs,
                "anchor_weight": alpha,
                "init_head": config.init_head,
                "select_seeds": config.select_seeds,
                "selection_val_acc": best_val,
                "val": _mean_std([r["val_acc"] for r in finals]),
                **_mean_std([r["test_acc"] for r in finals]),
            }
        )

    # 3. Table 6: L_gm at (γ, λ) pairs, at the lr and batch size selected for lgm.
    pairs = [
        (c, head, gamma, lam)
        for c in range(len(datasets))
        for head in config.heads
        for gamma, lam in (config.sensitivity if "lgm" in config.losses else ())
    ]
    records = iter(
        session.run(
            [
                task(c, head, "lgm", (*chosen[c, head, "lgm"][0][:2], gamma, lam), seed, "sensitivity")
                for c, head, gamma, lam in pairs
                for seed in range(config.seeds)
            ]
        )
    )
    sensitivity_rows = [
        {
            **run_ids(datasets[c], head, "lgm"),
            "gamma": gamma,
            "lam": lam,
            **_mean_std([next(records)["test_acc"] for _ in range(config.seeds)]),
        }
        for c, head, gamma, lam in pairs
    ]
    return rows, sensitivity_rows


def _mean_std(values: list[float]) -> dict[str, Any]:
    pct = [100 * v for v in values]
    return {
        "mean": round(statistics.fmean(pct), 4),
        "std": round(statistics.stdev(pct), 4) if len(pct) > 1 else 0.0,
        "n": len(pct),
        "values": [round(v, 4) for v in pct],
    }


def _progress_bar(config: ProbeConfig, datasets: list[ProbeData]):
    from tqdm.auto import tqdm

    total = 0
    for head in config.heads:
        recipe = config.recipe(head)
        base = len(recipe.lrs) * len(recipe.batch_sizes)
        for loss in config.losses:
            points = base * (1 if loss == "ce" else len(config.gammas) * len(config.lams))
            total += points * config.select_seeds + config.seeds
        if "lgm" in config.losses:
            total += len(config.sensitivity) * config.seeds
    return tqdm(total=total * len(datasets), desc="probe runs", unit="run", disable=not config.progress)
