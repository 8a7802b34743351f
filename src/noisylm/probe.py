"""The probing protocol of Sec. 4.3 / App. E: heads on cached frozen features, CE vs CE + LGM.

For every feature cache (one backbone on one dataset), head (`linear`, `mlp`) and loss (`ce`, `lgm`,
and the ablations `norm`, `cosine`, `l2-output`):

1. grid search on the validation split (learning rate × batch size, and γ × λ for the penalised
   losses), one seed per grid point (``select_seeds`` > 1: a point scores its mean validation
   accuracy over that many seeds); the test split is never looked at here;
2. the selected setting trained with N seeds (default 5); test accuracy reported as mean ± std.

Optional: the γ, λ sensitivity grid of Table 6, the input-sensitivity plot of Figure 6, L2-SP
anchoring (α/2)‖θ − θ₀‖² to the head's initial weights (``anchor_weight``) and initial head weights
from a file (``init_head``; Table 4's setting).

    out_dir/
      probe.json        resolved config, the caches probed, provenance
      results.jsonl     one line per training run: phase (select | final | sensitivity | figure6),
                        backbone, dataset, head, loss, hyper-parameters, seed, val/test accuracy
      summary.json      per (backbone, dataset, head, loss): mean/std test accuracy, selected setting
      table_main.md/.csv           Tables 1-3: rows backbone (+ L_gm), columns dataset x head, Avg
      table_ablation.md/.csv       Table 5 (when losses other than ce/lgm are probed)
      table_sensitivity.md/.csv    Table 6 (with `sensitivity`)
      figure6.png                  Figure 6 (with `figure6`)

While it runs, the probe works in ``<out_dir>.partial/`` (a sibling folder with a fixed name, so it
survives a crash): ``probe.json`` (the settings and a fingerprint of every cache) and ``results.jsonl``,
which grows by one complete, flushed line per finished run. ``out_dir`` appears only at the end, built
atomically; ``<out_dir>.partial/`` is then removed. After a crash or Ctrl-C, ``resume=True`` with the
same settings and caches reuses the finished runs (matched by their full spec) and trains the rest;
training is seeded, so the numbers equal those of an uninterrupted probe.

``jobs`` > 1 trains the independent runs of each phase at once in that many worker processes (all
selection runs, then all final runs, then all Table 6 runs; Figure 6 stays in this process). The
results equal those of ``jobs`` = 1 but for the ``seconds`` fields, and a probe may resume with
another ``jobs``. The workers are started with "spawn", so a script that calls `probe` with
``jobs`` > 1 needs the ``if __name__ == "__main__":`` guard.

Presets (App. E): ``nlu`` = Adam, 10 epochs, lr ∈ {3e-4, 6e-4}, batch ∈ {8, 12, 16, 32};
``vision`` = AdamW, 30 epochs, cosine schedule, linear head lr 0.1 without weight decay, MLP lr 1e-3
with weight decay 1e-4 (the paper gives no batch size; 128 here); ``quick`` = a small grid for demos.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from noisylm.artifacts import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    first_difference,
    provenance,
    read_json,
    sha256_file,
)
from noisylm.errors import NoisyLMError, UsageError
from noisylm.heads import HEAD_KINDS, make_head
from noisylm.lgm import VARIANTS, LGMLoss

# Loss names of the probe: `ce` is plain cross-entropy, the rest are LGM variants added to it.
LOSSES = ("ce",) + tuple(v for v in VARIANTS if v != "none")
LOSS_LABELS = {
    "ce": "",
    "lgm": " + L_gm",
    "norm": " + ‖∇θ ℓ‖₂",
    "cosine": " + (1 − cos)",
    "l2-output": " + L2 (‖g(t) − g(t̂)‖₂)",
}
HEAD_LABELS = {"linear": "Linear", "mlp": "MLP"}
PAPER_SENSITIVITY = ((0.001, 0.001), (0.05, 0.05), (0.1, 0.1))  # Table 6


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of one head kind under a preset (App. E)."""

    epochs: int
    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine


PRESETS: dict[str, dict[str, Recipe]] = {
    "nlu": {kind: Recipe(epochs=10, lrs=(3e-4, 6e-4), batch_sizes=(8, 12, 16, 32)) for kind in HEAD_KINDS},
    "vision": {
        "linear": Recipe(30, (0.1,), (128,), optimizer="adamw", weight_decay=0.0, schedule="cosine"),
        "mlp": Recipe(30, (1e-3,), (128,), optimizer="adamw", weight_decay=1e-4, schedule="cosine"),
    },
    "quick": {kind: Recipe(epochs=8, lrs=(1e-3, 3e-3), batch_sizes=(32,)) for kind in HEAD_KINDS},
}


@dataclass
class ProbeConfig:
    """What `probe` runs.

    heads: head kinds (`linear`, `mlp`). losses: `ce` and/or LGM variants (`lgm`, `norm`, `cosine`,
    `l2-output`). preset: `nlu`, `vision` or `quick` (optimiser, epochs, lr and batch grids).
    epochs / lrs / batch_sizes: override the preset's values for every head.
    gammas, lams: the γ and λ grids searched on validation for penalised losses (paper: 0.01, 0.15).
    anchor_weight: α of the L2-SP term (α/2)‖θ − θ₀‖² added to every loss (`ce` included), θ₀ = the
    head's initial weights (0 = off). init_head: a safetensors file of one head's state_dict that every
    run starts from (and anchors to) instead of a seeded random init; needs a single head kind.
    seeds: seeds per selected setting (mean ± std over them). select_seeds: seeds per grid point during
    selection, scored by their mean validation accuracy (1 = the paper's protocol; N costs N times the
    selection runs and gives a steadier choice when the validation split is small).
    sensitivity: (γ, λ) pairs for Table 6, trained for `lgm` at its selected lr/batch.
    figure6: draw Figure 6 for the first cache and head.
    device: cpu | cuda | auto. threads: CPU threads while training (heads on batches of 8-128 rows
    train fastest single-threaded, and several probes can then share a machine; None = torch's
    setting). jobs: runs trained at once, each in its own worker process with ``threads`` threads
    (1 = one after another in this process); the results do not depend on it, and a resumed probe
    may use another value. progress: tqdm bars.
    """

    heads: tuple[str, ...] = ("linear", "mlp")
    losses: tuple[str, ...] = ("ce", "lgm")
    preset: str = "nlu"
    epochs: int | None = None
    lrs: tuple[float, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    gammas: tuple[float, ...] = (0.01,)
    lams: tuple[float, ...] = (0.15,)
    anchor_weight: float = 0.0
    init_head: str | None = None
    seeds: int = 5
    select_seeds: int = 1
    sensitivity: tuple[tuple[float, float], ...] = ()
    figure6: bool = True
    device: str = "auto"
    threads: int | None = 1
    jobs: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.heads, self.losses = tuple(self.heads), tuple(self.losses)
        self.gammas, self.lams = tuple(self.gammas), tuple(self.lams)
        self.sensitivity = tuple((float(g), float(lam)) for g, lam in self.sensitivity)
        _check_choices("head", self.heads, HEAD_KINDS)
        _check_choices("loss", self.losses, LOSSES)
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if self.lrs is not None:
            self.lrs = tuple(float(x) for x in self.lrs)
            if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
                raise UsageError(f"learning rates must be positive numbers, got {self.lrs}")
        if self.batch_sizes is not None:
            self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
            if not self.batch_sizes or min(self.batch_sizes) < 1:
                raise UsageError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        for name, values in (("gamma", self.gammas), ("lambda", self.lams)):
            if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
                raise UsageError(f"{name} values must be finite numbers >= 0, got {values}")
        if self.sensitivity and "lgm" not in self.losses:
            raise UsageError("the sensitivity grid (Table 6) varies L_gm; add `lgm` to the losses")
        for gamma, lam in self.sensitivity:
            if not (gamma >= 0 and lam >= 0 and math.isfinite(gamma + lam)):
                raise UsageError(f"sensitivity pairs need finite gamma, lambda >= 0, got ({gamma}, {lam})")
        if self.seeds < 1:
            raise UsageError(f"seeds must be >= 1, got {self.seeds}")
        if self.select_seeds < 1:
            raise UsageError(f"select_seeds must be >= 1 (seeds per grid point), got {self.select_seeds}")
        try:
            self.anchor_weight = float(self.anchor_weight)
        except (TypeError, ValueError):
            raise UsageError(f"anchor_weight must be a number, got {self.anchor_weight!r}") from None
        if not (self.anchor_weight >= 0 and math.isfinite(self.anchor_weight)):
            raise UsageError(
                f"anchor_weight (α of the L2-SP term) must be a finite number >= 0, got {self.anchor_weight}"
            )
        if self.init_head is not None:
            self.init_head = str(self.init_head)
            if len(self.heads) != 1:
                raise UsageError(
                    f"init_head holds the weights of one head kind but heads are {', '.join(self.heads)}; "
                    "probe a single head kind with it (e.g. --heads linear)"
                )
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise UsageError(f"jobs must be an integer >= 1 (runs trained at once), got {self.jobs!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}; use auto, cpu or cuda[:N]")

    def recipe(self, head: str) -> Recipe:
        base = PRESETS[self.preset][head]
        return Recipe(
            epochs=self.epochs or base.epochs,
            lrs=self.lrs or base.lrs,
            batch_sizes=self.batch_sizes or base.batch_sizes,
            optimizer=base.optimizer,
            weight_decay=base.weight_decay,
            schedule=base.schedule,
        )


@dataclass
class ProbeData:
    """One feature cache in memory: the three splits and what the cache says about itself."""

    backbone: str
    dataset: str
    num_classes: int
    class_names: list[str]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    source: str = ""


def load_probe_data(cache_dir: str | Path) -> ProbeData:
    """Read and check a feature cache (`noisylm.features` format) for probing."""
    from noisylm.features import load_features

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    meta: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        features, labels, meta = load_features(cache_dir, split)
        splits[split] = (features, labels)
    data = ProbeData(
        backbone=str(meta.get("backbone", "?")),
        dataset=str(meta.get("dataset", "?")),
        num_classes=int(meta["num_classes"]),
        class_names=[str(c) for c in meta.get("class_names", [])],
        splits=splits,
        source=str(cache_dir),
    )
    check_probe_data(data)
    return data


def check_probe_data(data: ProbeData) -> None:
    """The bad inputs a probe cannot recover from, each as one line naming the fix."""
    dims = {split: tuple(x.shape[1:]) for split, (x, _) in data.splits.items()}
    for split, (features, labels) in data.splits.items():
        if features.dim() != 2 or labels.shape != (features.shape[0],):
            raise NoisyLMError(
                f"{data.source}: {split} needs [N, d] features and [N] labels, got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}; re-extract the cache"
            )
        if len(labels) == 0:
            fix = "use more data or a smaller validation fraction" if split == "val" else "re-extract"
            raise NoisyLMError(f"{data.source}: the {split} split is empty; {fix}")
        bad = ~torch.isfinite(features).all(1)
        if bad.any():
            raise NoisyLMError(
                f"{data.source}: {int(bad.sum())} {split} feature rows hold NaN/inf "
                f"(first: row {int(bad.nonzero()[0, 0])}); re-extract the cache or drop those examples"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
            raise NoisyLMError(
                f"{data.source}: {split} labels outside 0..{data.num_classes - 1}; fix the label mapping"
            )
    if len(set(dims.values())) > 1:
        raise NoisyLMError(
            f"{data.source}: feature dimensions differ between splits {dims}; re-extract all splits "
            "with one backbone"
        )
    train_classes = torch.unique(data.splits["train"][1]).numel()
    if train_classes < 2:
        raise NoisyLMError(
            f"{data.source}: the training split has a single class; a classifier needs >= 2 labelled classes"
        )


# --------------------------------------------------------------------------------------------------
# Training one head.


@dataclass(frozen=True)
class RunSpec:
    """One training run: a head kind, a loss, its hyper-parameters, a seed and the L2-SP weight α."""

    head: str
    loss: str
    lr: float
    batch_size: int
    gamma: float
    lam: float
    seed: int
    anchor_weight: float = 0.0


def initial_head(
    data: ProbeData,
    spec: RunSpec,
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """The head a run starts from (θ₀): ``init_state`` when given, else a random init seeded by the run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        head = make_head(spec.head, data.splits["train"][0].shape[1], data.num_classes)
    if init_state is not None:
        head.load_state_dict(init_state)
    return head.to(device)


def train_head(
    data: ProbeData,
    spec: RunSpec,
    recipe: Recipe,
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.nn.Module, float]:
    """Train one head on the train split; returns the head and the mean loss of its last epoch.

    ``init_state``: the head's initial weights (see `load_init_head`); L2-SP with
    ``spec.anchor_weight`` > 0 anchors to these (or to the seeded random init)."""
    features, labels = (t.to(device) for t in data.splits["train"])
    head = initial_head(data, spec, device, init_state)
    shuffle = torch.Generator().manual_seed(spec.seed)
    noise = torch.Generator(device=device).manual_seed(spec.seed + 1_000_003)
    variant = "none" if spec.loss == "ce" else spec.loss
    # θ₀ of the L2-SP term is snapshotted here, from the head as initialised above.
    criterion = LGMLoss(
        head,
        gamma=spec.gamma,
        lam=spec.lam,
        variant=variant,
        anchor_weight=spec.anchor_weight,
        generator=noise,
    )
    optimizer = make_optimizer(recipe, list(head.parameters()), spec.lr)
    n = len(labels)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    scheduler = None
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs * steps_per_epoch)
    head.train()
    last_epoch_loss = float("nan")
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=shuffle).to(device)
        # One gather per epoch; the batches are then contiguous views, not a gather per step.
        epoch_features, epoch_labels = features[order], labels[order]
        total = torch.zeros((), device=device)
        for start in range(0, n, spec.batch_size):
            batch_labels = epoch_labels[start : start + spec.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(epoch_features[start : start + spec.batch_size], batch_labels)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach() * len(batch_labels)
        last_epoch_loss = float(total) / n
    if not math.isfinite(last_epoch_loss):
        raise NoisyLMError(
            f"training diverged (loss {last_epoch_loss}) for {spec.head}/{spec.loss} at lr {spec.lr}; "
            "lower the learning rate"
        )
    head.eval()
    return head, last_epoch_loss


def make_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The recipe's Adam or AdamW, with the fused implementation where this torch has one for the
    parameters' device (CPU from torch 2.4, CUDA): it updates every tensor in one call, which halves
    the optimiser's share of a step for a head this small (measured on the CPU of `BENCHMARKS.md`);
    the same update rule."""
    optimizer_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    try:
        return optimizer_cls(params, lr=lr, weight_decay=recipe.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch version
        return optimizer_cls(params, lr=lr, weight_decay=recipe.weight_decay)


def load_init_head(
    path: str | Path, kind: str, datasets: Sequence[ProbeData]
) -> tuple[dict[str, torch.Tensor], str]:
    """Initial head weights from a safetensors file, checked against the ``kind`` head of every cache.

    Returns the float32 state dict and the file's sha256. Every mismatch is one line naming the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    save_hint = f"save one with safetensors.torch.save_file(make_head({kind!r}, d, C).state_dict(), path)"
    if not path.is_file():
        raise NoisyLMError(f"init head {path} not found; check the path or {save_hint}")
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        reason = str(exc).replace("\n", " ")
        raise NoisyLMError(f"cannot read init head {path} ({reason}); {save_hint}") from None
    for data in datasets:
        dim = data.splits["train"][0].shape[1]
        expected = make_head(kind, dim, data.num_classes).state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise NoisyLMError(
                f"init head {path} does not hold a {kind} head's weights (missing keys {missing}, "
                f"unexpected keys {unexpected}); {kind} heads have keys {sorted(expected)}"
            )
        for key, want in expected.items():
            got = tensors[key]
            if tuple(got.shape) != tuple(want.shape):
                raise NoisyLMError(
                    f"init head {path}: {key} has shape {tuple(got.shape)} but the {kind} head for "
                    f"{data.source} ({dim} features, {data.num_classes} classes) needs "
                    f"{tuple(want.shape)}; save weights of a head built for this cache"
                )
            if not got.is_floating_point() or not torch.isfinite(got).all():
                raise NoisyLMError(
                    f"init head {path}: {key} must hold finite floating-point values; save it again"
                )
    state = {key: tensors[key].float() for key in sorted(tensors)}
    return state, sha256_file(path)


def _distance(head: torch.nn.Module, start: torch.nn.Module) -> float:
    """‖θ − θ₀‖₂ over all parameters of two heads of one kind."""
    with torch.no_grad():
        squares = [(a - b).pow(2).sum() for a, b in zip(head.parameters(), start.parameters(), strict=True)]
        return float(torch.stack(squares).sum().sqrt())


@torch.no_grad()
def accuracy(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, chunk: int = 8192) -> float:
    """Fraction of rows whose arg-max prediction equals the label."""
    device = next(head.parameters()).device
    correct = 0
    for start in range(0, len(labels), chunk):
        logits = head(features[start : start + chunk].to(device))
        correct += int((logits.argmax(1).cpu() == labels[start : start + chunk]).sum())
    return correct / len(labels)


# --------------------------------------------------------------------------------------------------
# The protocol.


PARTIAL_FORMAT = "noisylm-probe-partial/1"
# What identifies a finished run in the progress file; resume reuses a run only on an exact match.
SPEC_FIELDS = (
    "phase", "backbone", "dataset", "head", "loss", "lr", "batch_size", "gamma", "lam", "seed", "epochs",
    "anchor_weight", "init_head",
)  # fmt: skip


def partial_dir(out_dir: str | Path) -> Path:
    """Where a probe into ``out_dir`` keeps its state while it runs: the sibling ``<out_dir>.partial/``.

    Its name is fixed (unlike `atomic_dir`'s random temporary name), so a crashed probe's finished runs
    can be found again by ``probe(..., resume=True)``."""
    out = Path(out_dir)
    if not out.name:  # "." or "dir/": name the folder after the real directory
        out = out.resolve()
    return out.with_name(out.name + ".partial")


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
    device = _resolve_device(config.device)
    partial = partial_dir(out_dir)
    if resume and not overwrite and Path(out_dir).exists() and not partial.exists():
        raise NoisyLMError(
            f"output {out_dir} already exists and holds no interrupted probe ({partial} is absent), so "
            "there is nothing to resume; pass --overwrite to run it again"
        )
    out = check_output_dir(out_dir, overwrite)
    state = _state(config, device, datasets, init_sha256)
    finished = _claim_partial(partial, state, resume=resume, overwrite=overwrite)

    started = time.perf_counter()
    figure_stats: dict[str, Any] | None = None
    trainer: _InProcess | _WorkerPool
    if config.jobs == 1:
        trainer = _InProcess(datasets, device, init_state)
    else:
        fingerprints = [cache["sha256"] for cache in state["caches"]]
        trainer = _WorkerPool(config, datasets, fingerprints, device, init_state, partial)
    session = _Session(config, datasets, trainer, finished, partial / "results.jsonl")
    try:
        with session, trainer, _torch_threads(config.threads):
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
            _write_tables(tmp, rows, sensitivity_rows, config)
            if config.figure6:
                shutil.copyfile(partial / "figure6.png", tmp / "figure6.png")
    except BaseException:
        if not session.written and not finished:  # nothing finished: no state worth resuming
            shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return summary


def _state(
    config: ProbeConfig, device: torch.device, datasets: list[ProbeData], init_sha256: str | None
) -> dict[str, Any]:
    """What must not change between a probe and its resumption: settings, device, cache contents."""
    # The bar and the number of worker processes change no number: a probe may resume with other ones.
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "jobs")}
    return {
        "format": PARTIAL_FORMAT,
        "config": json.loads(json.dumps(settings)),  # tuples as lists, as read back from probe.json
        "device": str(device),
        "init_head_sha256": init_sha256,
        "caches": [
            {"source": d.source, "backbone": d.backbone, "dataset": d.dataset, "sha256": _fingerprint(d)}
            for d in datasets
        ],
    }


def _fingerprint(data: ProbeData) -> str:
    """sha256 of a cache's tensors as loaded (the folder may move; its contents must not change)."""
    digest = hashlib.sha256(f"classes={data.num_classes}".encode())
    for split in ("train", "val", "test"):
        for tensor in data.splits[split]:
            digest.update(f"{split}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def _claim_partial(partial: Path, state: dict[str, Any], *, resume: bool, overwrite: bool) -> list[dict]:
    """Start ``partial`` afresh, or (``resume``) check it against ``state`` and return its finished runs."""
    if partial.exists() and not partial.is_dir():
        raise NoisyLMError(f"{partial} is a file, not a probe in progress; move it away")
    if partial.exists() and resume:
        previous = read_json(partial / "probe.json", "state of the interrupted probe")
        differs = _state_difference(previous, state)
        if differs:
            raise NoisyLMError(
                f"{partial} holds a probe started with different settings ({differs}); resume it with the "
                "same settings and caches, or drop --resume and pass --overwrite to start again"
            )
        finished = [r for r in _read_progress(partial / "results.jsonl") if r.get("phase") != "figure6"]
        # Rewritten without a torn last line (a kill mid-write), so that appended lines stay whole.
        atomic_write_text(partial / "results.jsonl", "".join(json.dumps(r) + "\n" for r in finished))
        return finished
    if partial.exists() and not overwrite:
        raise NoisyLMError(
            f"{partial} holds an interrupted probe; pass --resume to continue it (same settings), "
            "or --overwrite to discard it and start again"
        )
    with atomic_dir(partial, overwrite=True) as tmp:
        atomic_write_json(tmp / "probe.json", {**state, "provenance": provenance(state["config"])})
        atomic_write_text(tmp / "results.jsonl", "")
    return []


def _state_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first difference that changes results between two probe states ('' when none)."""
    if old.get("format") != new["format"]:
        return f"format {old.get('format')!r}, expected {new['format']!r}"
    differs = first_difference(old.get("config") or {}, new["config"])
    if differs:
        return differs
    for key in ("device", "init_head_sha256"):
        if old.get(key) != new[key]:
            return f"{key}: {old.get(key)!r} -> {new[key]!r}"
    old_caches, new_caches = old.get("caches") or [], new["caches"]
    if len(old_caches) != len(new_caches):
        return f"{len(old_caches)} caches -> {len(new_caches)}"
    for i, (a, b) in enumerate(zip(old_caches, new_caches, strict=True), 1):
        if a.get("sha256") != b["sha256"]:
            return f"cache {i} ({b['source']}) holds other features than {a.get('source')} did"
    return ""


def _read_progress(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a progress file (a torn last line from a killed probe is dropped)."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n")[:-1]:  # the part after the last newline is empty or torn
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _spec_key(record: dict[str, Any]) -> tuple:
    return tuple(record.get(name) for name in SPEC_FIELDS)


@dataclass(frozen=True)
class _Task:
    """One run to train: the cache (its index among the probe's caches), spec, recipe and phase."""

    cache: int
    spec: RunSpec
    recipe: Recipe
    phase: str


class _Session:
    """The runs of one probe: each is reused from an interrupted probe when its spec matches a finished
    run there, else handed to the trainer and appended to the progress file as soon as it finishes."""

    def __init__(
        self,
        config: ProbeConfig,
        datasets: list[ProbeData],
        trainer: _InProcess | _WorkerPool,
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
            self._finished.setdefault(_spec_key(record), []).append(record)
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

    def run(self, tasks: list[_Task]) -> list[dict[str, Any]]:
        """The records of ``tasks``, in their order: val accuracy, and test accuracy unless the phase is
        "select". The runs not reused are trained by the trainer (one by one, or several at once)."""
        done: dict[int, dict[str, Any]] = {}
        todo: list[tuple[int, _Task, dict[str, Any]]] = []
        for i, task in enumerate(tasks):
            ids = {
                "phase": task.phase,
                **_ids(self.datasets[task.cache], task.spec.head, task.spec.loss),
                **{k: v for k, v in asdict(task.spec).items() if k not in ("head", "loss")},
                "init_head": self.config.init_head,
                "epochs": task.recipe.epochs,
            }
            queue = self._finished.get(_spec_key(ids))
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


def _train_record(
    data: ProbeData,
    task: _Task,
    ids: dict[str, Any],
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """Train one run and return its record (``ids`` + loss, distance to θ₀, accuracies, seconds)."""
    started = time.perf_counter()
    head, train_loss = train_head(data, task.spec, task.recipe, device, init_state)
    start = initial_head(data, task.spec, device, init_state)
    record = {
        **ids,
        "train_loss": round(train_loss, 6),
        "distance_to_init": round(_distance(head, start), 6),
        "val_acc": accuracy(head, *data.splits["val"]),
    }
    if task.phase != "select":  # the test split is never used for selection
        record["test_acc"] = accuracy(head, *data.splits["test"])
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


_Done = Iterator[tuple[int, dict[str, Any]]]


class _InProcess:
    """Trains the runs one after another in this process (``jobs`` = 1)."""

    def __init__(
        self, datasets: list[ProbeData], device: torch.device, init_state: dict[str, torch.Tensor] | None
    ) -> None:
        self.datasets, self.device, self.init_state = datasets, device, init_state

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def train(self, todo: list[tuple[int, _Task, dict[str, Any]]]) -> _Done:
        """(index, record) of each run of ``todo`` as it finishes."""
        for i, task, ids in todo:
            yield i, _train_record(self.datasets[task.cache], task, ids, self.device, self.init_state)


class _WorkerPool:
    """Trains up to ``jobs`` runs at once, each in a worker process with ``threads`` torch threads.

    Workers are started with "spawn" (torch and fork do not mix) when the first run needs one, and
    kept for the whole probe, so each reads each cache once (a task carries the cache's path, not its
    tensors). On an error or Ctrl-C the queued runs are cancelled and the runs in flight are ended (a
    resume trains them again); the finished ones are already in the progress file."""

    def __init__(
        self,
        config: ProbeConfig,
        datasets: list[ProbeData],
        fingerprints: list[str],
        device: torch.device,
        init_state: dict[str, torch.Tensor] | None,
        partial: Path,
    ) -> None:
        self.jobs, self.partial = config.jobs, partial
        self.caches = [data.source for data in datasets]
        self.fingerprints = fingerprints
        # Workers train with the threads a `jobs` = 1 probe would use, so that the numbers are the same.
        threads = config.threads if config.threads is not None else torch.get_num_threads()
        init_bytes = None
        if init_state is not None:
            from safetensors.torch import save

            init_bytes = save(init_state)
        self._initargs = (threads, str(device), init_bytes, os.getpid())
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _WorkerPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if exc_type is not None:
            # The runs in flight are abandoned: end their processes rather than wait for them.
            # ProcessPoolExecutor has no public way to do so before Python 3.14.
            terminate = getattr(pool, "terminate_workers", None)
            if terminate is not None:
                terminate()
            else:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def train(self, todo: list[tuple[int, _Task, dict[str, Any]]]) -> _Done:
        """(index, record) of each run of ``todo`` as it finishes, in any order."""
        if not todo:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=self._initargs,
            )
        # Workers are started inside `submit`; see `_sigint_blocked`.
        with _sigint_blocked():
            futures = {
                self._pool.submit(
                    _worker_train, self.caches[task.cache], self.fingerprints[task.cache], task, ids
                ): i
                for i, task, ids in todo
            }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()  # a worker's error is raised here, as it was
        except BrokenProcessPool:
            raise NoisyLMError(
                f"a probe worker process died (killed or out of memory, or a script calling probe() "
                f"without an `if __name__ == '__main__':` guard); the finished runs are kept in "
                f"{self.partial}/: run it again with --resume, with fewer --jobs if memory is short"
            ) from None


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while worker processes start: they inherit the blocked signal (a
    Ctrl-C goes to the whole process group) until `_worker_init` makes them ignore it for good, so that
    only this process handles a Ctrl-C; one pressed meanwhile reaches this process when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# The state of a worker process, set by `_worker_init`; caches are loaded on first use and kept.
_WORKER: dict[str, Any] = {}


def _worker_init(threads: int, device: str, init_head: bytes | None, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(threads)
    init_state = None
    if init_head is not None:
        from safetensors.torch import load

        init_state = load(init_head)
    _WORKER.update(device=torch.device(device), init_state=init_state, data={})
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # An idle worker would wait for tasks forever once the main process is gone (kill -9): end it.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_train(cache: str, fingerprint: str, task: _Task, ids: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process; its cache is read on the worker's first run of it, then kept."""
    data = _WORKER["data"].get(cache)
    if data is None:
        data = load_probe_data(cache)
        if _fingerprint(data) != fingerprint:
            raise NoisyLMError(
                f"{cache}: its features changed on disk while the probe ran; restore them, or start "
                "again with --overwrite"
            )
        _WORKER["data"][cache] = data
    return _train_record(data, task, ids, _WORKER["device"], _WORKER["init_state"])


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
    ) -> _Task:
        return _Task(c, RunSpec(head, loss, *point, seed, alpha), config.recipe(head), phase)

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
                **_ids(datasets[c], head, loss),
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
            **_ids(datasets[c], head, "lgm"),
            "gamma": gamma,
            "lam": lam,
            **_mean_std([next(records)["test_acc"] for _ in range(config.seeds)]),
        }
        for c, head, gamma, lam in pairs
    ]
    return rows, sensitivity_rows


def _ids(data: ProbeData, head: str, loss: str) -> dict[str, str]:
    return {"backbone": data.backbone, "dataset": data.dataset, "head": head, "loss": loss}


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return row["backbone"], row["dataset"], row["head"], row["loss"]


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


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoisyLMError(f"device {device} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def _check_choices(what: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not values:
        raise UsageError(f"no {what}s given; choose from {', '.join(allowed)}")
    for value in values:
        if value not in allowed:
            raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise UsageError(f"{what}s repeated in {values}; list each once")


# --------------------------------------------------------------------------------------------------
# Tables (Markdown + CSV) shaped like the paper's.


def _cell(row: dict[str, Any] | None) -> str:
    return "/" if row is None else f"{row['mean']:.2f} ± {row['std']:.2f}"


def _table(row_names: list[str], lookup, columns: list[tuple[str, str]], heads: tuple[str, ...], avg: bool):
    """Rows × (dataset, head) cells; `lookup(row_name, dataset, head)` -> row dict or None."""
    md_head = ["", *[f"{d} {HEAD_LABELS[h]}" for d, h in columns]]
    csv_head = ["method", *[f"{d} {h} {s}" for d, h in columns for s in ("mean", "std")]]
    if avg:
        md_head += [f"Avg {HEAD_LABELS[h]}" for h in heads]
        csv_head += [f"Avg {h}" for h in heads]
    md = ["| " + " | ".join(md_head) + " |", "|" + "---|" * len(md_head)]
    csv = [",".join(_csv(c) for c in csv_head)]
    for name in row_names:
        cells = [lookup(name, d, h) for d, h in columns]
        md_row = [name, *[_cell(c) for c in cells]]
        csv_row = [name, *[x for c in cells for x in (("", "") if c is None else (c["mean"], c["std"]))]]
        if avg:
            for h in heads:
                means = [c["mean"] for (d, hh), c in zip(columns, cells, strict=True) if hh == h and c]
                value = statistics.fmean(means) if means else None
                md_row.append("/" if value is None else f"{value:.2f}")
                csv_row.append("" if value is None else round(value, 4))
        md.append("| " + " | ".join(str(x) for x in md_row) + " |")
        csv.append(",".join(_csv(x) for x in csv_row))
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def _csv(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',"') else text


def _write_tables(out: Path, rows, sensitivity_rows, config: ProbeConfig) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    columns = [(d, h) for d in datasets for h in config.heads]
    index = {_key(r): r for r in rows}

    def write(name: str, title: str, table: tuple[str, str]) -> None:
        atomic_write_text(out / f"table_{name}.md", f"{title}\n\n{table[0]}")
        atomic_write_text(out / f"table_{name}.csv", table[1])

    chosen = "" if config.select_seeds == 1 else f" (mean of {config.select_seeds} seeds per grid point)"
    caption = (
        f"Test accuracy (%), mean ± std over {config.seeds} seeds; hyper-parameters chosen on validation"
        f"{chosen}."
    )
    if config.init_head:
        caption += f" Heads start from {Path(config.init_head).name}."
    if config.anchor_weight > 0:
        caption += f" L2-SP anchoring to the initial weights, α = {config.anchor_weight:g}."
    main_losses = [loss for loss in ("ce", "lgm") if loss in config.losses] or list(config.losses[:1])
    names = {f"{b}{LOSS_LABELS[loss]}": (b, loss) for b in backbones for loss in main_losses}
    lookup = lambda name, d, h: index.get((*names[name][:1], d, h, names[name][1]))  # noqa: E731
    write("main", f"Tables 1-3 layout. {caption}", _table(list(names), lookup, columns, config.heads, True))
    if set(config.losses) - {"ce", "lgm"}:
        names = {f"{b}{LOSS_LABELS[loss]}": (b, loss) for b in backbones for loss in config.losses}
        write(
            "ablation",
            f"Table 5 layout (ablation of the penalty). {caption}",
            _table(list(names), lookup, columns, config.heads, False),
        )
    if sensitivity_rows:
        sens = {(r["backbone"], r["dataset"], r["head"], r["gamma"], r["lam"]): r for r in sensitivity_rows}
        names_s = {f"{b} γ={g:g} λ={lam:g}": (b, g, lam) for b in backbones for g, lam in config.sensitivity}

        def lookup_s(name, d, h):
            b, g, lam = names_s[name]
            return sens.get((b, d, h, g, lam))

        write(
            "sensitivity",
            f"Table 6 layout (γ, λ sensitivity of L_gm at the selected lr/batch). {caption}",
            _table(list(names_s), lookup_s, columns, config.heads, False),
        )


# --------------------------------------------------------------------------------------------------
# Figure 6.


def figure6(
    data: ProbeData,
    config: ProbeConfig,
    rows: list[dict[str, Any]],
    device: torch.device,
    path: Path,
    records: list[dict[str, Any]] | None = None,
    resolution: int = 121,
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Figure 6: predicted labels of heads trained with CE, L2 (‖g(t) − g(t̂)‖₂) and LGM on a random
    2-D plane through one test feature (the MLP head when probed, else the first head kind);
    green = the correct label. Returns the fraction of the plane
    each head labels correctly (a larger correct region = less sensitive to input perturbations).
    The heads start from ``init_state`` when given and use ``config.anchor_weight``, like the probe's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    head_kind = "mlp" if "mlp" in config.heads else config.heads[0]
    recipe = config.recipe(head_kind)
    index = {
        (r["head"], r["loss"]): r
        for r in rows
        if (r["backbone"], r["dataset"]) == (data.backbone, data.dataset)
    }
    base = index.get((head_kind, "lgm")) or index.get((head_kind, "ce")) or {}
    lr = base.get("lr", recipe.lrs[0])
    batch_size = base.get("batch_size", recipe.batch_sizes[0])
    gamma = base.get("gamma") or config.gammas[0]
    lam = base.get("lam") or config.lams[0]
    heads = {}
    for loss, title in (
        ("ce", "(a) CE, no regulariser"),
        ("l2-output", "(b) CE + L2"),
        ("lgm", "(c) CE + L_gm"),
    ):
        row = index.get((head_kind, loss), {})
        spec = RunSpec(
            head_kind,
            loss,
            row.get("lr", lr),
            row.get("batch_size", batch_size),
            0.0 if loss == "ce" else (row.get("gamma") or gamma),
            0.0 if loss == "ce" else (row.get("lam") or lam),
            0,
            config.anchor_weight,
        )
        head, _ = train_head(data, spec, recipe, device, init_state)
        heads[title] = head
        if records is not None:
            records.append(
                {
                    "phase": "figure6",
                    **_ids(data, head_kind, loss),
                    **asdict(spec),
                    "init_head": config.init_head,
                    "test_acc": accuracy(head, *data.splits["test"]),
                }
            )

    test_x, test_y = data.splits["test"]
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        correct_all = torch.ones(len(test_y), dtype=torch.bool)
        for head in heads.values():
            correct_all &= head(test_x.to(device)).argmax(1).cpu() == test_y
    candidates = correct_all.nonzero()[:, 0] if correct_all.any() else torch.arange(len(test_y))
    pick = int(candidates[torch.randint(len(candidates), (1,), generator=rng)])
    point, label = test_x[pick], int(test_y[pick])
    # A random plane through the point: two orthonormal Gaussian directions. Its half-width: the
    # smallest of r0·2^k (r0 = distance to the nearest other-class mean) at which the CE head labels at
    # most half of the plane correctly, so that all panels show boundaries at one common scale.
    directions, _ = torch.linalg.qr(torch.randn(point.numel(), 2, generator=rng, dtype=torch.float64))
    directions = directions.float()
    train_x, train_y = data.splits["train"]
    others = [c for c in range(data.num_classes) if c != label and (train_y == c).any()]
    means = torch.stack([train_x[train_y == c].mean(0) for c in others]) if others else point[None] * 2
    base_radius = float((means - point).norm(dim=1).min()) or 1.0

    def plane(radius: float) -> torch.Tensor:
        steps = torch.linspace(-radius, radius, resolution)
        a, b = torch.meshgrid(steps, steps, indexing="xy")
        return point + a.reshape(-1, 1) * directions[:, 0] + b.reshape(-1, 1) * directions[:, 1]

    ce_head = next(iter(heads.values()))
    for k in range(12):
        radius = base_radius * 2**k
        with torch.no_grad():
            if (ce_head(plane(radius).to(device)).argmax(1).cpu() == label).float().mean() <= 0.5:
                break
    grid = plane(radius)

    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (4, 5)]  # no greens
    colors = [palette[c % len(palette)] for c in range(data.num_classes)]
    colors[label] = (0.1, 0.65, 0.2)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.2), constrained_layout=True)
    stats: dict[str, Any] = {
        "head": head_kind,
        "test_index": pick,
        "label": data.class_names[label] if label < len(data.class_names) else label,
        "radius": radius,
        "correct_fraction": {},
    }
    for ax, (title, head) in zip(axes, heads.items(), strict=True):
        with torch.no_grad():
            pred = head(grid.to(device)).argmax(1).cpu().reshape(resolution, resolution)
        fraction = float((pred == label).float().mean())
        stats["correct_fraction"][title] = round(fraction, 4)
        ax.imshow(
            pred.numpy(),
            origin="lower",
            extent=(-radius, radius, -radius, radius),
            cmap=ListedColormap(colors),
            vmin=-0.5,
            vmax=data.num_classes - 0.5,
            interpolation="nearest",
        )
        ax.plot([0], [0], marker="*", color="black", markersize=12)
        ax.set_title(f"{title}\ncorrect region {100 * fraction:.1f}%", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Figure 6: predictions on a random 2-D plane around test example {pick} "
        f"({data.backbone} / {data.dataset}, {head_kind} head; green = correct label)",
        fontsize=10,
    )
    from noisylm.artifacts import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return stats


# --------------------------------------------------------------------------------------------------
# `make demo`.


def demo_probe(out_dir: str | Path) -> Path:
    """MiniLM features of a small WordNet-gloss subset (26 classes), linear and MLP heads, CE vs CE + LGM.

    Re-uses the feature cache in ``out_dir/features`` when present; the probe output in
    ``out_dir/probe`` is replaced. Returns the probe directory.
    """
    from noisylm.features import extract

    out_dir = Path(out_dir)
    cache = out_dir / "features-minilm-wordnet"
    if not (cache / "meta.json").exists():
        print(f"   extracting MiniLM features of 1,200 + 400 WordNet glosses into {cache}", flush=True)
        extract("minilm", "wordnet", cache, overwrite=True, max_train=1200, max_test=400, progress=True)
    config = ProbeConfig(
        heads=("linear", "mlp"), losses=("ce", "lgm"), preset="quick", seeds=3, figure6=True, device="cpu"
    )
    result_dir = out_dir / "probe"
    summary = probe([cache], result_dir, config, overwrite=True)
    for row in summary["rows"]:
        print(f"   {row['head']:>6} {row['loss']:>3}: test accuracy {row['mean']:.2f} ± {row['std']:.2f}%")
    print(f"   tables: {result_dir / 'table_main.md'}, figure: {result_dir / 'figure6.png'}")
    return result_dir
