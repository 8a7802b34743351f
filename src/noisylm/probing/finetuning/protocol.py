"""`finetune()`: the paper's Table 4 protocol — full fine-tuning with L2-SP, SMART and LNSR (and none),
each alone and + λ·L_gm, on one or more tasks.

For every task:

1. selection (only where a grid has more than one point): learning rate × batch size × the
   regulariser's weight, each point trained on train and scored by the task's metric on the selection
   split (carved from train; ``select_seeds`` seeds per point, their mean); the dev split is never
   looked at here. A ``+ L_gm`` row keeps its regulariser's selected setting and selects λ of L_gm
   the same way, so that the two rows differ in L_gm alone;
2. every row at its selected setting with N seeds, scored on dev: mean ± std over seeds, and for
   each ``+ L_gm`` row the paired difference to its regulariser alone (same seeds, hence the same head
   initialisation, batches and dropout masks), with a t-based 95% interval over seeds.

    out_dir/
      finetune.json     resolved config, the tasks (sizes, how the splits were made, sha256), encoder,
                        provenance
      results.jsonl     one line per run: phase (select | select-lgm | final), task, regulariser, lgm, lr,
                        batch_size, weight, lgm_lam, seed, metrics (selection split for select phases,
                        dev for final), losses, encoder_distance, steps, seconds
      summary.json      one row per task × regulariser × (± L_gm): selected setting, dev metric
                        mean/std/values, every metric's mean/std, paired difference to the regulariser
                        alone (+ L_gm rows)
      table4.md / .csv  Table 4 layout: rows regulariser and regulariser + L_gm, columns tasks (their
                        headline metric ×100); the CSV has every metric, one line per row × task

While it runs it works in ``<out_dir>.partial/`` (`noisylm.probing.protocol.resume`, shared with
`noisylm probe`): each finished run is appended at once to its ``results.jsonl``; ``resume=True``
continues after a crash or Ctrl-C with the same settings and data, reusing the finished runs (runs are
seeded, so the numbers equal those of an uninterrupted call). ``out_dir`` appears only at the end.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from noisylm.artifacts import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir, provenance
from noisylm.errors import UsageError
from noisylm.probing.finetuning.data import METRIC_LABELS, TASK_TYPES, FinetuneTask, load_task
from noisylm.probing.finetuning.model import POOLINGS, Encoder, encoder_layers, load_encoder
from noisylm.probing.finetuning.regularisers import REGULARISER_LABELS, REGULARISERS
from noisylm.probing.finetuning.trainer import (
    RunSettings,
    Tokenized,
    settings_record,
    steps_per_run,
    tokenize,
    train_run,
)
from noisylm.probing.protocol.resume import check_resumable, claim_partial, partial_dir
from noisylm.runtime import resolve_device, torch_threads

PARTIAL_FORMAT = "noisylm-finetune-partial/1"
# What identifies a finished run in the progress file; resume reuses a run only on an exact match.
RUN_KEY = ("phase", "task", "regulariser", "lgm", "lr", "batch_size", "weight", "lgm_lam", "seed")
WEIGHTED = {"l2-sp": "l2sp_alphas", "smart": "smart_lambdas", "lnsr": "lnsr_lambdas"}


@dataclass(frozen=True)
class Preset:
    """Defaults of a `FinetuneConfig`; every field can be overridden."""

    epochs: int
    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    head_lr: float | None
    max_length: int
    max_train: int | None
    max_dev: int | None
    seeds: int
    l2sp_alphas: tuple[float, ...]
    smart_lambdas: tuple[float, ...]
    lnsr_lambdas: tuple[float, ...]
    lgm_lams: tuple[float, ...]
    weight_decay: float


PRESETS: dict[str, Preset] = {
    # MiniLM on a bundled task on 2 CPU cores in minutes: one fixed setting per row, no search.
    "cpu": Preset(
        epochs=3,
        lrs=(2e-4,),
        batch_sizes=(16,),
        head_lr=2e-3,
        max_length=24,
        max_train=200,
        max_dev=200,
        seeds=3,
        l2sp_alphas=(0.01,),
        smart_lambdas=(1.0,),
        lnsr_lambdas=(1.0,),
        lgm_lams=(0.15,),
        weight_decay=0.0,
    ),
    # The paper's setting (BERT-Large on GLUE's RTE, MRPC, CoLA, STS-B), on a GPU: BERT's fine-tuning
    # grid (Devlin et al. 2019), SMART's λ_s grid (Jiang et al. 2020), L2-SP's α around Li et al.'s 0.1.
    "glue-bert-large": Preset(
        epochs=3,
        lrs=(1e-5, 2e-5, 3e-5),
        batch_sizes=(16, 32),
        head_lr=None,
        max_length=128,
        max_train=None,
        max_dev=None,
        seeds=5,
        l2sp_alphas=(0.001, 0.01, 0.1),
        smart_lambdas=(1.0, 3.0, 5.0),
        lnsr_lambdas=(0.1, 1.0),
        lgm_lams=(0.05, 0.15, 0.5),
        weight_decay=0.01,
    ),
}


@dataclass
class FinetuneConfig:
    """What `finetune` does. ``None`` fields take the preset's value (``PRESETS``).

    regularisers: rows of Table 4 among none, l2-sp, smart, lnsr; lgm: also each + λ·L_gm.
    seeds: final runs per row; select_seeds: seeds per grid point during selection.
    lrs, batch_sizes: grids (the encoder's learning rate); head_lr: the head's (None in the preset: lr).
    l2sp_alphas, smart_lambdas, lnsr_lambdas: the regularisers' weight grids; lgm_lams: λ of L_gm;
    gamma: std of Eq. 3's feature noise. Fixed settings: l2sp_beta (head decay of L2-SP), smart_*
    (Jiang et al.'s ε, η, σ, μ), lnsr_sigma, lnsr_layer (the layer whose input gets the noise).
    epochs, warmup (share of updates), weight_decay, max_grad_norm: the optimiser (AdamW).
    max_length: tokens per example; max_train / max_dev: stratified caps; selection_fraction: share
    of train held out for selection; data_seed: seeds every split. pooling: None = the encoder's own.
    task_type, label_field, text_fields: for users' files. device, threads, progress: how it runs.
    """

    preset: str = "cpu"
    regularisers: tuple[str, ...] = REGULARISERS
    lgm: bool = True
    seeds: int | None = None
    select_seeds: int = 1
    epochs: int | None = None
    lrs: tuple[float, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    head_lr: float | None = None
    l2sp_alphas: tuple[float, ...] | None = None
    smart_lambdas: tuple[float, ...] | None = None
    lnsr_lambdas: tuple[float, ...] | None = None
    lgm_lams: tuple[float, ...] | None = None
    gamma: float = 0.01
    l2sp_beta: float = 0.01
    smart_epsilon: float = 1e-5
    smart_step_size: float = 1e-3
    smart_sigma: float = 1e-5
    smart_mu: float = 1.0
    lnsr_sigma: float = 0.01
    lnsr_layer: int = 0
    warmup: float = 0.1
    weight_decay: float | None = None
    max_grad_norm: float = 1.0
    max_length: int | None = None
    max_train: int | None = None
    max_dev: int | None = None
    selection_fraction: float = 0.1
    data_seed: int = 0
    pooling: str | None = None
    task_type: str = "auto"
    label_field: str = "label"
    text_fields: tuple[str, ...] | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[self.preset]
        for name in (f.name for f in fields(Preset)):
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        for name in (
            "regularisers",
            "lrs",
            "batch_sizes",
            "l2sp_alphas",
            "smart_lambdas",
            "lnsr_lambdas",
            "lgm_lams",
        ):
            setattr(self, name, tuple(getattr(self, name)))
        if self.text_fields is not None:
            self.text_fields = tuple(self.text_fields)
        self._check()

    def _check(self) -> None:
        unknown = [r for r in self.regularisers if r not in REGULARISERS]
        if unknown:
            raise UsageError(f"unknown regulariser {unknown[0]!r}; choose from {', '.join(REGULARISERS)}")
        if not self.regularisers or len(set(self.regularisers)) != len(self.regularisers):
            raise UsageError("give each regulariser once (at least one of none, l2-sp, smart, lnsr)")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        if self.task_type not in TASK_TYPES:
            raise UsageError(f"unknown task type {self.task_type!r}; use one of {', '.join(TASK_TYPES)}")
        counts = {
            "seeds": self.seeds,
            "select_seeds": self.select_seeds,
            "epochs": self.epochs,
            "max_length": self.max_length,
        }
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value}")
        grids = {
            "lrs": self.lrs,
            "batch_sizes": self.batch_sizes,
            "l2sp_alphas": self.l2sp_alphas,
            "smart_lambdas": self.smart_lambdas,
            "lnsr_lambdas": self.lnsr_lambdas,
            "lgm_lams": self.lgm_lams,
        }
        for name, grid in grids.items():
            if not grid:
                raise UsageError(f"{name} needs at least one value")
            for value in grid:
                if not (value >= 0 and math.isfinite(value)) or (
                    name in ("lrs", "batch_sizes") and value <= 0
                ):
                    raise UsageError(f"{name} must hold finite numbers > 0 (weights: >= 0), got {value}")
        if any(int(b) != b for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be integers, got {self.batch_sizes}")
        scalars = {
            "gamma": self.gamma,
            "l2sp_beta": self.l2sp_beta,
            "smart_epsilon": self.smart_epsilon,
            "smart_step_size": self.smart_step_size,
            "smart_sigma": self.smart_sigma,
            "smart_mu": self.smart_mu,
            "lnsr_sigma": self.lnsr_sigma,
            "weight_decay": self.weight_decay,
            "max_grad_norm": self.max_grad_norm,
        }
        for name, value in scalars.items():
            if not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"{name} must be a finite number >= 0, got {value}")
        if self.head_lr is not None and not (self.head_lr > 0 and math.isfinite(self.head_lr)):
            raise UsageError(f"head_lr must be a finite number > 0, got {self.head_lr}")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"warmup must be a share of the updates in [0, 1), got {self.warmup}")
        if self.lnsr_layer < 0:
            raise UsageError(f"lnsr_layer must be >= 0, got {self.lnsr_layer}")

    def weights(self, regulariser: str) -> tuple[float | None, ...]:
        """The weight grid of a regulariser ((None,) for none)."""
        return tuple(getattr(self, WEIGHTED[regulariser])) if regulariser in WEIGHTED else (None,)

    def regulariser_settings(self, regulariser: str) -> tuple[tuple[str, Any], ...]:
        if regulariser == "l2-sp":
            return (("beta", self.l2sp_beta),)
        if regulariser == "smart":
            return (
                ("epsilon", self.smart_epsilon),
                ("step_size", self.smart_step_size),
                ("sigma", self.smart_sigma),
                ("mu", self.smart_mu),
            )
        if regulariser == "lnsr":
            return (("sigma", self.lnsr_sigma), ("layer", self.lnsr_layer))
        return ()


def row_label(regulariser: str, lgm: bool) -> str:
    return REGULARISER_LABELS[regulariser] + (" + L_gm" if lgm else "")


def finetune(
    backbone: Any,
    datasets: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` on each task of ``datasets`` under every regulariser (± L_gm); write
    results and the Table 4 layout to ``out_dir`` (see the module docstring).

    backbone: ``minilm``, ``sentence:PATH``, ``hf:PATH``, a model folder, or a loaded
    `noisylm.probing.features.Backbone` of those kinds. datasets: bundled names (``wordnet``,
    ``wordnet-pairs``), GLUE folders (RTE, MRPC, CoLA, STS-B) or files/folders `noisylm extract` reads.
    ``resume``: continue the call interrupted in ``<out_dir>.partial/`` (same config and data).
    ``overwrite``: replace ``out_dir`` and, without ``resume``, discard an interrupted call's state.
    Bad input (unknown regulariser, missing backbone folder, labels outside the classes, ...) stops it
    with one line before anything is written. Returns the summary (also in ``out_dir/summary.json``).
    """
    config = config or FinetuneConfig()
    specs = [datasets] if isinstance(datasets, str | Path) else list(datasets)
    if not specs:
        raise UsageError("no dataset given; pass at least one (e.g. wordnet-pairs or path/to/MRPC)")
    tasks = [
        load_task(
            spec,
            seed=config.data_seed,
            max_train=config.max_train,
            max_dev=config.max_dev,
            selection_fraction=config.selection_fraction,
            task_type=config.task_type,
            label_field=config.label_field,
            text_fields=config.text_fields,
        )
        for spec in specs
    ]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UsageError(f"two datasets have the same task name ({', '.join(names)}); give each task once")
    encoder = load_encoder(backbone, max_length=config.max_length, pooling=config.pooling)
    if "lnsr" in config.regularisers:
        depth = len(encoder_layers(encoder.model))
        if config.lnsr_layer >= depth:
            raise UsageError(
                f"lnsr_layer {config.lnsr_layer} does not exist: {encoder.spec} has layers 0..{depth - 1}"
            )
    device = resolve_device(config.device)
    partial = partial_dir(out_dir)
    check_resumable(out_dir, partial, resume=resume, overwrite=overwrite, what="fine-tuning")
    out = check_output_dir(out_dir, overwrite)
    state = _state(config, device, encoder, tasks)
    finished = claim_partial(partial, state, resume=resume, overwrite=overwrite)

    if config.progress:  # before the wait: a carved dev split, caps
        print_notes({"tasks": [t.describe() for t in tasks]}, sys.stderr)
    started = time.perf_counter()
    session = _Session(finished, partial / "results.jsonl")
    try:
        with session, torch_threads(config.threads):
            rows = _protocol(session, config, encoder, tasks, device)
        summary = {
            "rows": rows,
            "tasks": [t.describe() for t in tasks],
            "encoder": {
                "backbone": encoder.spec,
                "sha256": encoder.hash,
                "pooling": encoder.pooling,
                "max_length": encoder.max_length,
            },
            "reused_runs": session.reused,
            "seconds": round(time.perf_counter() - started, 2),
            "device": str(device),
            "provenance": provenance(asdict(config)),
        }
        with atomic_dir(out, overwrite=overwrite) as tmp:
            atomic_write_json(
                tmp / "finetune.json",
                {
                    "config": asdict(config),
                    "datasets": [str(s) for s in specs],
                    "tasks": summary["tasks"],
                    "encoder": summary["encoder"],
                    "provenance": provenance(asdict(config)),
                },
            )
            atomic_write_text(tmp / "results.jsonl", "".join(json.dumps(r) + "\n" for r in session.records))
            atomic_write_json(tmp / "summary.json", summary)
            write_table4(tmp, rows, tasks, config, encoder.spec)
    except BaseException:
        if not session.written and not finished:  # nothing finished: no state worth resuming
            shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return summary


def _state(config: FinetuneConfig, device: torch.device, encoder: Encoder, tasks: list[FinetuneTask]) -> dict:
    """What must not change between a call and its resumption (`claim_partial`'s state)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "threads")}
    return {
        "format": PARTIAL_FORMAT,
        "config": json.loads(json.dumps(settings)),  # tuples as lists, as read back from the file
        "device": str(device),
        "init_head_sha256": None,
        "caches": [
            {
                "source": encoder.spec,
                "backbone": encoder.spec,
                "dataset": "(encoder)",
                "sha256": encoder.hash,
            },
            *(
                {"source": t.source, "backbone": encoder.spec, "dataset": t.name, "sha256": t.fingerprint()}
                for t in tasks
            ),
        ],
    }


class _Session:
    """The runs of one call: reused from an interrupted call when their key matches a finished run
    there, else trained and appended to the progress file as soon as they finish."""

    def __init__(self, finished: list[dict[str, Any]], progress_path: Path) -> None:
        self.records: list[dict[str, Any]] = []
        self.reused = 0
        self.written = 0
        self._finished: dict[tuple, dict[str, Any]] = {_key(r): r for r in finished}
        self._path = progress_path
        self._file: Any = None
        self.bar: Any = None

    def __enter__(self) -> _Session:
        self._file = open(self._path, "ab", buffering=0)  # noqa: SIM115 - one unbuffered write per run
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        self._file.close()

    def reusable(self, ids: dict[str, Any]) -> dict[str, Any] | None:
        return self._finished.get(_key(ids))

    def record(self, record: dict[str, Any], reused: bool) -> None:
        self.records.append(record)
        if reused:
            self.reused += 1
            return
        self._file.write((json.dumps(record) + "\n").encode("utf-8"))
        self.written += 1


def _key(record: dict[str, Any]) -> tuple:
    return tuple(json.dumps(record.get(name)) for name in RUN_KEY)


@dataclass
class _Planned:
    """One run to do: its identity and settings, and the splits it trains and is scored on."""

    ids: dict[str, Any]
    settings: RunSettings
    task: FinetuneTask
    train: Tokenized
    evaluation: Tokenized


def _protocol(
    session: _Session,
    config: FinetuneConfig,
    encoder: Encoder,
    tasks: list[FinetuneTask],
    device: torch.device,
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    data = {
        t.name: {s: tokenize(encoder, t, t.splits[s]) for s in ("train", "selection", "dev")} for t in tasks
    }
    session.bar = tqdm(
        total=0, desc="fine-tuning", unit="step", disable=not config.progress, dynamic_ncols=True
    )

    def settings(regulariser: str, lgm: bool, lr: float, batch: int, weight, lam, seed: int) -> RunSettings:
        return RunSettings(
            regulariser=regulariser,
            weight=weight,
            lr=lr,
            batch_size=int(batch),
            epochs=config.epochs,
            seed=seed,
            lgm=lgm,
            lgm_lam=lam if lgm else 0.0,
            gamma=config.gamma,
            head_lr=config.head_lr,
            warmup=config.warmup,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            regulariser_settings=config.regulariser_settings(regulariser),
        )

    def plan(phase: str, task: FinetuneTask, s: RunSettings) -> _Planned:
        ids = {
            "phase": phase,
            "task": task.name,
            "regulariser": s.regulariser,
            "lgm": s.lgm,
            "lr": s.lr,
            "batch_size": s.batch_size,
            "weight": s.weight,
            "lgm_lam": s.lgm_lam if s.lgm else None,
            "seed": s.seed,
        }
        split = "selection" if phase.startswith("select") else "dev"
        return _Planned(ids, s, task, data[task.name]["train"], data[task.name][split])

    # 1. Selection of each regulariser's lr, batch size and weight (where there is a choice).
    base_grid = {
        r: list(itertools.product(config.lrs, config.batch_sizes, config.weights(r)))
        for r in config.regularisers
    }
    select = [
        plan("select", task, settings(r, False, lr, batch, weight, None, seed))
        for task in tasks
        for r in config.regularisers
        if len(base_grid[r]) > 1
        for lr, batch, weight in base_grid[r]
        for seed in range(config.select_seeds)
    ]
    # The bar's total: exact for the selection, an estimate (first batch size) for the rest until then.
    later = len(config.regularisers) * (
        (2 if config.lgm else 1) * config.seeds
        + (len(config.lgm_lams) * config.select_seeds if config.lgm and len(config.lgm_lams) > 1 else 0)
    )
    session.bar.total = _steps(select) + later * sum(
        steps_per_run(len(data[t.name]["train"]), config.batch_sizes[0], config.epochs) for t in tasks
    )
    records = iter(_run(session, select, encoder, device))
    selected: dict[tuple[str, str], tuple[float, int, float | None, float | None]] = {}
    for task in tasks:
        for r in config.regularisers:
            selected[task.name, r] = (*base_grid[r][0], None)
            if len(base_grid[r]) > 1:
                scores = [
                    statistics.fmean(
                        next(records)["metrics"][task.metric] for _ in range(config.select_seeds)
                    )
                    for _ in base_grid[r]
                ]
                best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the earlier point
                selected[task.name, r] = (*base_grid[r][best], scores[best])

    # 2. λ of L_gm at each regulariser's selected setting.
    lgm_select = [
        plan("select-lgm", task, settings(r, True, *selected[task.name, r][:3], lam, seed))
        for task in tasks
        for r in config.regularisers
        if config.lgm and len(config.lgm_lams) > 1
        for lam in config.lgm_lams
        for seed in range(config.select_seeds)
    ]
    finals_steps = (
        sum(
            steps_per_run(len(data[t.name]["train"]), selected[t.name, r][1], config.epochs)
            for t in tasks
            for r in config.regularisers
        )
        * config.seeds
        * (2 if config.lgm else 1)
    )
    session.bar.total = session.bar.n + _steps(lgm_select) + finals_steps
    session.bar.refresh()
    records = iter(_run(session, lgm_select, encoder, device))
    lgm_selected: dict[tuple[str, str], tuple[float, float | None]] = {}
    for task in tasks:
        for r in config.regularisers:
            lgm_selected[task.name, r] = (config.lgm_lams[0], None)
            if config.lgm and len(config.lgm_lams) > 1:
                scores = [
                    statistics.fmean(
                        next(records)["metrics"][task.metric] for _ in range(config.select_seeds)
                    )
                    for _ in config.lgm_lams
                ]
                best = max(range(len(scores)), key=lambda i: (scores[i], -i))
                lgm_selected[task.name, r] = (config.lgm_lams[best], scores[best])
    finals = [
        plan(
            "final", task, settings(r, lgm, *selected[task.name, r][:3], lgm_selected[task.name, r][0], seed)
        )
        for task in tasks
        for r in config.regularisers
        for lgm in ((False, True) if config.lgm else (False,))
        for seed in range(config.seeds)
    ]

    # 3. Every row at its selected setting, N seeds, scored on dev.
    final_records = iter(_run(session, finals, encoder, device))
    rows = []
    for task in tasks:
        for r in config.regularisers:
            lr, batch, weight, score = selected[task.name, r]
            variants = [(False, None, score)]
            if config.lgm:
                lam, lgm_score = lgm_selected[task.name, r]
                variants.append((True, lam, lgm_score))
            for lgm, lam, selection_score in variants:
                runs = [next(final_records) for _ in range(config.seeds)]
                rows.append(_row(task, r, lgm, lr, batch, weight, lam, selection_score, runs, config))
    for row in rows:
        if row["lgm"]:
            base = next(
                b
                for b in rows
                if b["task"] == row["task"] and b["regulariser"] == row["regulariser"] and not b["lgm"]
            )
            row["paired_difference"] = paired_difference(row["values"], base["values"])
    return rows


def _steps(planned: list[_Planned]) -> int:
    return sum(steps_per_run(len(p.train), p.settings.batch_size, p.settings.epochs) for p in planned)


def _run(session: _Session, planned: list[_Planned], encoder: Encoder, device: torch.device) -> list[dict]:
    """The records of ``planned``, in order: reused where the progress file has them, else trained."""
    out = []
    for p in planned:
        record = session.reusable(p.ids)
        if record is not None:
            session.bar.total -= steps_per_run(len(p.train), p.settings.batch_size, p.settings.epochs)
            session.bar.refresh()
            session.record(record, reused=True)
        else:
            session.bar.set_description(
                f"{p.task.name} {row_label(p.settings.regulariser, p.settings.lgm)} seed {p.settings.seed}"
                f" ({p.ids['phase']})"
            )
            result = train_run(encoder, p.task, p.train, p.evaluation, p.settings, device, bar=session.bar)
            record = {
                **p.ids,
                **{k: v for k, v in settings_record(p.settings).items() if k not in p.ids},
                "split": "selection" if p.ids["phase"].startswith("select") else "dev",
                **result,
            }
            session.record(record, reused=False)
        out.append(record)
    return out


def _row(
    task: FinetuneTask,
    regulariser: str,
    lgm: bool,
    lr: float,
    batch: int,
    weight,
    lam,
    score,
    runs: list[dict],
    config: FinetuneConfig,
) -> dict[str, Any]:
    values = [100 * r["metrics"][task.metric] for r in runs]
    metrics = {
        name: _mean_std([100 * r["metrics"][name] if name != "mse" else r["metrics"][name] for r in runs])
        for name in runs[0]["metrics"]
    }
    return {
        "task": task.name,
        "metric": task.metric,
        "regulariser": regulariser,
        "lgm": lgm,
        "row": row_label(regulariser, lgm),
        "lr": lr,
        "batch_size": batch,
        "weight": weight,
        "lgm_lam": lam,
        "gamma": config.gamma if lgm else None,
        "selection_score": None if score is None else round(100 * score, 4),
        **_mean_std(values),
        "metrics": metrics,
        "encoder_distance": round(statistics.fmean(r["encoder_distance"] for r in runs), 6),
    }


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": [round(v, 4) for v in values],
    }


def paired_difference(values: list[float], baseline: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of the per-seed differences ``values − baseline`` and its t-based ``confidence`` interval
    over seeds (mean ± t_{n−1} · sd / √n); no interval with a single seed."""
    from scipy.stats import t as student_t

    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        low = high = None
    else:
        half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
        low, high = round(mean - half, 4), round(mean + half, 4)
    return {
        "mean": round(mean, 4),
        "low": low,
        "high": high,
        "n": n,
        "confidence": confidence,
        "values": [round(d, 4) for d in diffs],
    }


def write_table4(
    out: Path, rows: list[dict], tasks: list[FinetuneTask], config: FinetuneConfig, backbone: str
) -> None:
    """table4.md (headline metric per task, ×100) and table4.csv (every metric, one line per row × task)."""
    index = {(r["task"], r["regulariser"], r["lgm"]): r for r in rows}
    order = [(r, lgm) for r in config.regularisers for lgm in ((False, True) if config.lgm else (False,))]
    header = ["", *[t.label for t in tasks]]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r, lgm in order:
        cells = [row_label(r, lgm)]
        for t in tasks:
            row = index[t.name, r, lgm]
            cell = f"{row['mean']:.2f} ± {row['std']:.2f}"
            diff = row.get("paired_difference")
            if diff is not None:
                interval = (
                    "" if diff["low"] is None else f", 95% CI [{diff['low']:+.2f}, {diff['high']:+.2f}]"
                )
                cell += f" (Δ {diff['mean']:+.2f}{interval})"
            cells.append(cell)
        md.append("| " + " | ".join(cells) + " |")
    search = "selected on the selection split" if _searched(config) else "fixed (no search)"
    caption = (
        f"Table 4 layout: {backbone} fully fine-tuned, preset {config.preset}; dev-split metric ×100, mean ± "
        f"std over {config.seeds} seeds; hyper-parameters {search}. Δ: paired difference of a + L_gm row to "
        f"its regulariser alone (same seeds), with a t-based 95% interval over seeds."
    )
    atomic_write_text(out / "table4.md", caption + "\n\n" + "\n".join(md) + "\n")
    names = sorted(
        {m for r in rows for m in r["metrics"]},
        key=lambda m: list(METRIC_LABELS).index(m) if m in METRIC_LABELS else 99,
    )
    columns = [
        "row",
        "regulariser",
        "lgm",
        "task",
        "metric",
        "mean",
        "std",
        "n",
        "diff_mean",
        "diff_low",
        "diff_high",
        "lr",
        "batch_size",
        "weight",
        "lgm_lam",
        "selection_score",
        *[f"{m}_{s}" for m in names for s in ("mean", "std")],
    ]
    lines = [",".join(columns)]
    for r, lgm in order:
        for t in tasks:
            row = index[t.name, r, lgm]
            diff = row.get("paired_difference") or {}
            values = [
                row["row"],
                r,
                lgm,
                t.name,
                t.metric,
                row["mean"],
                row["std"],
                row["n"],
                diff.get("mean"),
                diff.get("low"),
                diff.get("high"),
                row["lr"],
                row["batch_size"],
                row["weight"],
                row["lgm_lam"],
                row["selection_score"],
                *[row["metrics"].get(m, {}).get(s) for m in names for s in ("mean", "std")],
            ]
            lines.append(",".join("" if v is None else _csv(v) for v in values))
    atomic_write_text(out / "table4.csv", "\n".join(lines) + "\n")


def _csv(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',"\n') else text


def _searched(config: FinetuneConfig) -> bool:
    grid = len(config.lrs) * len(config.batch_sizes)
    return (
        grid > 1 or any(len(config.weights(r)) > 1 for r in config.regularisers) or len(config.lgm_lams) > 1
    )


def print_notes(summary: dict[str, Any], stream: Any = None) -> None:
    """How the splits of each task were made (a carved dev split, caps), one line each."""
    stream = stream or sys.stdout
    for task in summary["tasks"]:
        for split, note in task["notes"].items():
            print(f"note: {task['name']}: {split}: {note}", file=stream)
