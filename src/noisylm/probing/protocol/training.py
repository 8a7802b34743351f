"""Training one head: a run's spec, its initial weights, the training loop, accuracy and the run's record.

Pairing: a run's random choices come from its seed alone, each from its own generator: the head's
initial weights (`initial_head`), the per-epoch permutation of the training examples and the δ of
Eq. 3 (drawn only by penalised losses, from a generator of its own, so that drawing it moves nothing
else). Seed s of `ce` and of every penalised loss therefore starts from the same weights and, at the
same batch size, sees the same batches in the same order; only the loss differs."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from noisylm.artifacts import sha256_file
from noisylm.errors import NoisyLMError
from noisylm.probing.heads import make_head
from noisylm.probing.lgm import LGMLoss
from noisylm.probing.protocol.baseline import LogRegSpec, logreg_record
from noisylm.probing.protocol.config import Recipe
from noisylm.probing.protocol.data import ProbeData, feature_std


@dataclass(frozen=True)
class RunSpec:
    """One training run: a head kind, a loss, its hyper-parameters, a seed, the L2-SP weight α and
    how γ is read (`absolute`, or `feature-std`: relative to the training split's per-dimension std)."""

    head: str
    loss: str
    lr: float
    batch_size: int
    gamma: float
    lam: float
    seed: int
    anchor_weight: float = 0.0
    gamma_scale: str = "absolute"


def perturbation_scale(data: ProbeData, gamma_scale: str) -> torch.Tensor | None:
    """The per-dimension scale s of δ in t̂ = t + γ(s ⊙ δ): None for `absolute` (Eq. 3 as written),
    the training split's per-dimension std for `feature-std`."""
    if gamma_scale == "absolute":
        return None
    if gamma_scale == "feature-std":
        return feature_std(data)
    raise NoisyLMError(f"unknown gamma scale {gamma_scale!r}; choose absolute or feature-std")


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
    scale = perturbation_scale(data, spec.gamma_scale) if variant != "none" else None
    # θ₀ of the L2-SP term is snapshotted here, from the head as initialised above.
    criterion = LGMLoss(
        head,
        gamma=spec.gamma,
        lam=spec.lam,
        variant=variant,
        anchor_weight=spec.anchor_weight,
        generator=noise,
        feature_scale=None if scale is None else scale.to(device),
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


def run_ids(data: ProbeData, head: str, loss: str) -> dict[str, str]:
    return {"backbone": data.backbone, "dataset": data.dataset, "head": head, "loss": loss}


@dataclass(frozen=True)
class Task:
    """One run to train: the cache (its index among the probe's caches), spec, recipe, phase and the σ
    of the feature noise the cache is seen with (`data.with_feature_noise`). A `LogRegSpec` spec is a
    logistic-regression fit (`baseline`) instead of a head."""

    cache: int
    spec: RunSpec | LogRegSpec
    recipe: Recipe | None
    phase: str
    feature_noise: float = 0.0


def train_record(
    data: ProbeData,
    task: Task,
    ids: dict[str, Any],
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """Train one run and return its record (``ids`` + loss, distance to θ₀, accuracies, seconds)."""
    if isinstance(task.spec, LogRegSpec):
        return logreg_record(data, task.spec, ids, test=task.phase != "logreg-select")
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
