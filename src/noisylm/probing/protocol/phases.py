"""The protocol: `probe()` and its three phases (selection; final and paired runs; Table 6), run by a
session that reuses an interrupted probe's finished runs and records each new one as it finishes."""

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
from noisylm.errors import UsageError
from noisylm.probing.protocol.baseline import LogRegSpec
from noisylm.probing.protocol.config import ProbeConfig
from noisylm.probing.protocol.data import FeatureViews, ProbeData, load_probe_data
from noisylm.probing.protocol.figures import feature_noise_figure, figure6
from noisylm.probing.protocol.paired import paired_difference, t_interval
from noisylm.probing.protocol.resume import check_resumable, claim_partial, partial_dir, probe_state, spec_key
from noisylm.probing.protocol.tables import feature_noise_curves, write_tables
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
    (backbone, dataset, feature noise σ, head, loss), each penalised one with its difference to CE
    seed by seed (``vs_ce``) and its ``paired`` runs at CE's lr and batch size; ``sensitivity`` rows;
    ``logreg`` (the logistic-regression reference); ``feature_noise`` (accuracy against σ, with
    several σ); ``figure6`` stats; ``reused_runs`` (runs taken from the interrupted probe); ``seconds``.
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
    check_resumable(out_dir, partial, resume=resume, overwrite=overwrite, what="probe")
    out = check_output_dir(out_dir, overwrite)
    state = probe_state(config, device, datasets, init_sha256)
    finished = claim_partial(partial, state, resume=resume, overwrite=overwrite)

    started = time.perf_counter()
    figure_stats: dict[str, Any] | None = None
    views = FeatureViews(datasets, config.feature_noise_seed)
    trainer: InProcess | WorkerPool
    if config.jobs == 1:
        trainer = InProcess(views, device, init_state)
    else:
        fingerprints = [cache["sha256"] for cache in state["caches"]]
        trainer = WorkerPool(config, datasets, fingerprints, device, init_state, partial)
    session = _Session(config, datasets, trainer, finished, partial / "results.jsonl")
    try:
        with session, trainer, torch_threads(config.threads):
            rows, sensitivity_rows, logreg_rows = _protocol(session, datasets)
            if config.figure6:
                # Figure 6 needs the heads themselves, so its three runs are trained again on resume.
                # It is drawn for the first cache at the first feature-noise σ.
                sigma = config.feature_noise[0]
                figure_records: list[dict[str, Any]] = []
                figure_stats = figure6(
                    views.get(0, sigma), config, [r for r in rows if r["feature_noise"] == sigma], device,
                    partial / "figure6.png", figure_records, init_state=init_state,
                )  # fmt: skip
                for record in figure_records:
                    session.append(record)
        curves = feature_noise_curves(rows, logreg_rows) if len(config.feature_noise) > 1 else None
        summary = {
            "rows": rows,
            "sensitivity": sensitivity_rows,
            "logreg": logreg_rows,
            "feature_noise": curves,
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
            write_tables(tmp, rows, sensitivity_rows, logreg_rows, config)
            if curves is not None:
                feature_noise_figure(curves, tmp / "feature_noise.png")
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
            data = self.datasets[task.cache]
            if isinstance(task.spec, LogRegSpec):
                ids = {"phase": task.phase, **run_ids(data, "linear", "logreg"), "C": task.spec.C}
            else:
                ids = {
                    "phase": task.phase,
                    **run_ids(data, task.spec.head, task.spec.loss),
                    **{k: v for k, v in asdict(task.spec).items() if k not in ("head", "loss")},
                    "init_head": self.config.init_head,
                    "epochs": task.recipe.epochs,
                }
            ids["feature_noise"] = task.feature_noise
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


# A grid point: (lr, batch size, γ scale, γ, λ).
Point = tuple[float, int, str, float, float]
Cell = tuple[int, float, str, str]  # (cache index, feature-noise σ, head, loss)


def _grid(config: ProbeConfig, head: str, loss: str) -> list[Point]:
    """The (lr, batch size, γ scale, γ, λ) points searched on validation; γ = λ = 0 for plain CE."""
    recipe, penalised = config.recipe(head), loss != "ce"
    return list(
        itertools.product(
            recipe.lrs,
            recipe.batch_sizes,
            config.gamma_scales if penalised else ("absolute",),
            config.gammas if penalised else (0.0,),
            config.lams if penalised else (0.0,),
        )
    )


def _best(points: list[Point], scores: dict[Point, float]) -> tuple[Point, float]:
    """The point with the best score; ties keep the earlier (smaller) setting."""
    best_val, best = -1.0, points[0]
    for point in points:
        if scores[point] > best_val:
            best_val, best = scores[point], point
    return best, best_val


def _protocol(session: _Session, datasets: list[ProbeData]) -> tuple[list[dict], list[dict], list[dict]]:
    """The protocol in three phases, each a list of independent runs that the session's trainer may run
    at once:

    1. selection runs of every cache × σ × head × loss (and the logistic regression's C grid);
    2. the final runs at each selected setting, the paired runs (every penalised loss at CE's selected
       lr and batch size, with its γ scale, γ and λ chosen on validation among the grid points there;
       trained only where that differs from its own selected setting, whose runs are then the
       paired ones) and the logistic regression at its C;
    3. the Table 6 runs (at lgm's selected lr, batch size and γ scale).
    """
    config = session.config
    session.bar = _progress_bar(config, datasets)
    alpha = config.anchor_weight
    views = [(c, sigma) for c in range(len(datasets)) for sigma in config.feature_noise]
    cells: list[Cell] = [
        (c, s, head, loss) for c, s in views for head in config.heads for loss in config.losses
    ]
    grids = {cell: _grid(config, cell[2], cell[3]) for cell in cells}
    logreg_views = views if config.logreg and "linear" in config.heads else []
    cs = sorted(config.logreg_cs)

    def task(cell: Cell, point: Point, seed: int, phase: str) -> Task:
        c, sigma, head, loss = cell
        lr, batch_size, gamma_scale, gamma, lam = point
        spec = RunSpec(head, loss, lr, batch_size, gamma, lam, seed, alpha, gamma_scale)
        return Task(c, spec, config.recipe(head), phase, sigma)

    # 1. Selection: each grid point scores its mean validation accuracy over `select_seeds` seeds.
    records = iter(
        session.run(
            [
                task(cell, point, seed, "select")
                for cell in cells
                for point in grids[cell]
                for seed in range(config.select_seeds)
            ]
            + [Task(c, LogRegSpec(C), None, "logreg-select", sigma) for c, sigma in logreg_views for C in cs]
        )
    )
    scores: dict[Cell, dict[Point, float]] = {}
    chosen: dict[Cell, tuple[Point, float]] = {}
    for cell in cells:
        scores[cell] = {
            point: statistics.fmean(next(records)["val_acc"] for _ in range(config.select_seeds))
            for point in grids[cell]
        }
        chosen[cell] = _best(grids[cell], scores[cell])
    logreg_chosen = {}
    for view in logreg_views:
        val = {C: next(records)["val_acc"] for C in cs}
        best_c = max(cs, key=lambda C: (val[C], -cs.index(C)))  # ties keep the smaller C
        logreg_chosen[view] = best_c, val[best_c]

    # Paired settings: CE's lr and batch size, the penalty's own (γ scale, γ, λ) best there.
    paired: dict[Cell, tuple[Point, float]] = {}
    for cell in cells:
        c, sigma, head, loss = cell
        if loss == "ce" or "ce" not in config.losses:
            continue
        ce_lr, ce_batch = chosen[c, sigma, head, "ce"][0][:2]
        there = [p for p in grids[cell] if p[:2] == (ce_lr, ce_batch)]
        paired[cell] = _best(there, scores[cell])
    retrain = [cell for cell in paired if paired[cell][0] != chosen[cell][0]]
    session.bar.total += len(retrain) * config.seeds
    session.bar.refresh()

    # 2. The selected setting of every cell with `seeds` seeds; the paired runs; the logistic regression.
    final_tasks = [
        task(cell, chosen[cell][0], seed, "final") for cell in cells for seed in range(config.seeds)
    ]
    paired_tasks = [
        task(cell, paired[cell][0], seed, "paired") for cell in retrain for seed in range(config.seeds)
    ]
    logreg_tasks = [Task(c, LogRegSpec(logreg_chosen[c, s][0]), None, "logreg", s) for c, s in logreg_views]
    records = iter(session.run(final_tasks + paired_tasks + logreg_tasks))
    finals = {cell: [next(records) for _ in range(config.seeds)] for cell in cells}
    paired_runs = {cell: [next(records) for _ in range(config.seeds)] for cell in retrain}
    logreg_rows = []
    for c, sigma in logreg_views:
        record = next(records)
        logreg_rows.append(
            {
                **run_ids(datasets[c], "linear", "logreg"),
                "feature_noise": sigma,
                "C": record["C"],
                "selection_val_acc": logreg_chosen[c, sigma][1],
                "val_acc": record["val_acc"],
                "converged": record["converged"],
                "mean": round(100 * record["test_acc"], 4),
                "std": None,
                "n": 1,
            }
        )

    rows = []
    for cell in cells:
        c, sigma, head, loss = cell
        (lr, batch_size, gamma_scale, gamma, lam), best_val = chosen[cell]
        penalised = loss != "ce"
        row = {
            **run_ids(datasets[c], head, loss),
            "feature_noise": sigma,
            "lr": lr,
            "batch_size": batch_size,
            "gamma_scale": gamma_scale if penalised else None,
            "gamma": gamma if penalised else None,
            "lam": lam if penalised else None,
            "epochs": config.recipe(head).epochs,
            "anchor_weight": alpha,
            "init_head": config.init_head,
            "select_seeds": config.select_seeds,
            "selection_val_acc": best_val,
            "val": _mean_std([r["val_acc"] for r in finals[cell]]),
            **_mean_std([r["test_acc"] for r in finals[cell]]),
            "vs_ce": None,
            "paired": None,
        }
        if cell in paired:
            ce = _percent(finals[c, sigma, head, "ce"])
            row["vs_ce"] = paired_difference(_percent(finals[cell]), ce).as_dict()
            (p_lr, p_batch, p_scale, p_gamma, p_lam), p_val = paired[cell]
            runs = paired_runs.get(cell, finals[cell])
            row["paired"] = {
                "lr": p_lr,
                "batch_size": p_batch,
                "gamma_scale": p_scale,
                "gamma": p_gamma,
                "lam": p_lam,
                "selection_val_acc": p_val,
                "same_as_selected": cell not in paired_runs,
                "val": _mean_std([r["val_acc"] for r in runs]),
                **_mean_std([r["test_acc"] for r in runs]),
                "vs_ce": paired_difference(_percent(runs), ce).as_dict(),
            }
        rows.append(row)

    # 3. Table 6: L_gm at (γ, λ) pairs, at the lr, batch size and γ scale selected for lgm.
    pairs = [
        (c, sigma, head, gamma, lam)
        for c, sigma in views
        for head in config.heads
        for gamma, lam in (config.sensitivity if "lgm" in config.losses else ())
    ]

    def sensitivity_point(c: int, sigma: float, head: str, gamma: float, lam: float) -> Point:
        lr, batch_size, gamma_scale = chosen[c, sigma, head, "lgm"][0][:3]
        return lr, batch_size, gamma_scale, gamma, lam

    records = iter(
        session.run(
            [
                task(
                    (c, sigma, head, "lgm"),
                    sensitivity_point(c, sigma, head, gamma, lam),
                    seed,
                    "sensitivity",
                )
                for c, sigma, head, gamma, lam in pairs
                for seed in range(config.seeds)
            ]
        )
    )
    sensitivity_rows = [
        {
            **run_ids(datasets[c], head, "lgm"),
            "feature_noise": sigma,
            "gamma_scale": sensitivity_point(c, sigma, head, gamma, lam)[2],
            "gamma": gamma,
            "lam": lam,
            **_mean_std([next(records)["test_acc"] for _ in range(config.seeds)]),
        }
        for c, sigma, head, gamma, lam in pairs
    ]
    return rows, sensitivity_rows, logreg_rows


def _percent(records: list[dict[str, Any]]) -> list[float]:
    """Test accuracies in %, in seed order (the order the runs were listed in)."""
    return [100 * r["test_acc"] for r in records]


def _mean_std(values: list[float]) -> dict[str, Any]:
    pct = [100 * v for v in values]
    _, _, interval = t_interval(pct)
    return {
        "mean": round(statistics.fmean(pct), 4),
        "std": round(statistics.stdev(pct), 4) if len(pct) > 1 else 0.0,
        "n": len(pct),
        "values": [round(v, 4) for v in pct],
        # t-based 95% interval of the mean over seeds (None with one seed)
        "ci95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
    }


def _progress_bar(config: ProbeConfig, datasets: list[ProbeData]):
    """A bar over the runs known before selection; the paired runs are added once selection is done."""
    from tqdm.auto import tqdm

    total = 0
    for head in config.heads:
        recipe = config.recipe(head)
        base = len(recipe.lrs) * len(recipe.batch_sizes)
        for loss in config.losses:
            penalised = len(config.gamma_scales) * len(config.gammas) * len(config.lams)
            points = base * (1 if loss == "ce" else penalised)
            total += points * config.select_seeds + config.seeds
        if "lgm" in config.losses:
            total += len(config.sensitivity) * config.seeds
    if config.logreg and "linear" in config.heads:
        total += len(config.logreg_cs) + 1
    total *= len(datasets) * len(config.feature_noise)
    # disable=None: a bar on a terminal, none in a log file (no carriage returns there)
    return tqdm(total=total, desc="probe runs", unit="run", disable=None if config.progress else True)
