"""One fine-tuning run: a fresh copy of the encoder with a seeded head, trained on a task's train split
with a regulariser (and optionally + λ·L_gm), then scored on an evaluation split.

The recipe is BERT's (Devlin et al. 2019), as the fine-tuning papers of Table 4 use it: AdamW, linear
warm-up over the first ``warmup`` share of the updates then linear decay to 0, gradient norm clipped
to ``max_grad_norm``, dropout on. The head may take its own learning rate (``head_lr``). The seed fixes
the head's initial weights, the batch order, the dropout masks and the regularisers' noise, so a run
is reproducible, and two runs that differ only in their loss (e.g. a regulariser with and without
L_gm) see the same batches and dropout masks: their difference is paired.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from noisylm.errors import NoisyLMError
from noisylm.probing.finetuning.data import FinetuneTask, TextSplit, task_metrics
from noisylm.probing.finetuning.gradient_matching import gradient_matching_terms
from noisylm.probing.finetuning.model import Encoder, FinetuneModel, build_model
from noisylm.probing.finetuning.regularisers import Regulariser, RngState, StepState, make_regulariser


@dataclass(frozen=True)
class RunSettings:
    """Everything one run depends on besides the task and the encoder.

    regulariser / weight: see `make_regulariser`; regulariser_settings: its fixed settings.
    lgm: add λ·L_gm (``lgm_lam``) with feature noise γ (``gamma``, Eq. 3). lr: the encoder's learning
    rate; head_lr: the head's (None: lr). epochs, batch_size, warmup (share of updates),
    weight_decay (AdamW's, on every parameter but biases and LayerNorms), max_grad_norm, seed.
    """

    regulariser: str
    weight: float | None
    lr: float
    batch_size: int
    epochs: int
    seed: int
    lgm: bool = False
    lgm_lam: float = 0.0
    gamma: float = 0.01
    head_lr: float | None = None
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    regulariser_settings: tuple[tuple[str, Any], ...] = ()


def tokenize(encoder: Encoder, task: FinetuneTask, split: TextSplit) -> Tokenized:
    """Token ids of every example (unpadded); a pair is truncated longest-first to ``max_length``."""
    texts = [[record[f] for record in split.records] for f in task.fields]
    encoded = encoder.tokenizer(*texts, truncation=True, max_length=encoder.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return Tokenized([{k: encoded[k][i] for k in keys} for i in range(len(split))], split.labels)


def collate(
    examples: list[dict[str, list[int]]], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example (right padding, mask 0 on the padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {}
    for key in examples[0]:
        fill = pad_id if key == "input_ids" else 0
        rows = [e[key] + [fill] * (width - len(e[key])) for e in examples]
        batch[key] = torch.tensor(rows, dtype=torch.long, device=device)
    return batch


def steps_per_run(n_train: int, batch_size: int, epochs: int) -> int:
    """Optimiser updates of one run (the last, smaller batch of an epoch included)."""
    return epochs * math.ceil(n_train / batch_size)


@dataclass
class Tokenized:
    """A split ready for the model: token ids of each example (unpadded) and the labels."""

    ids: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def train_run(
    encoder: Encoder,
    task: FinetuneTask,
    train: Tokenized,
    evaluation: Tokenized,
    settings: RunSettings,
    device: torch.device,
    *,
    bar: Any = None,
) -> dict[str, Any]:
    """Fine-tune once on ``train`` and score on ``evaluation``; returns the run's record (metrics as
    fractions, train_loss of the last epoch, the penalties' means, the encoder's distance to its
    pre-trained weights, seconds). ``bar``: a tqdm bar advanced once per update."""
    started = time.perf_counter()
    torch.manual_seed(settings.seed)  # dropout masks; everything else has its own seeded generator
    model = build_model(encoder, task.num_outputs, settings.seed, device)
    model.train()
    train_ids = train.ids
    targets = torch.as_tensor(train.labels, device=device)
    targets = targets.float() if task.kind == "regression" else targets.long()
    total_steps = steps_per_run(len(train_ids), settings.batch_size, settings.epochs)
    noise_gen = torch.Generator(device=device).manual_seed(settings.seed + 1_000_003)
    regulariser = make_regulariser(
        settings.regulariser, settings.weight, generator=noise_gen, **dict(settings.regulariser_settings)
    )
    regulariser.attach(model, total_steps)
    optimizer = _optimizer(model, settings, device)
    warm = max(1, int(settings.warmup * total_steps)) if settings.warmup > 0 else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warm, total_steps))
    pad_id = encoder.tokenizer.pad_token_id
    order_rng = np.random.default_rng(settings.seed)
    sums = {"loss": 0.0, "task_loss": 0.0, "regulariser_penalty": 0.0, "lgm_penalty": 0.0}
    step = 0
    for _ in range(settings.epochs):
        order = order_rng.permutation(len(train_ids))
        sums = dict.fromkeys(sums, 0.0)
        batches = 0
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            batch = collate([train_ids[i] for i in index], pad_id, device)
            parts = _step(
                model,
                batch,
                targets[torch.as_tensor(index, device=device)],
                regulariser,
                settings,
                noise_gen,
                step,
                task.kind == "regression",
            )
            if not math.isfinite(parts["loss"]):
                raise NoisyLMError(
                    f"the loss became {parts['loss']} at update {step + 1} (regulariser "
                    f"{settings.regulariser}, lr {settings.lr:g}); lower the learning rate or the weights"
                )
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            regulariser.after_step(model, step)
            step += 1
            batches += 1
            for key in sums:
                sums[key] += parts[key]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
    predictions = predict(model, evaluation.ids, device, pad_id)
    record = {
        **{k: round(v / max(batches, 1), 6) for k, v in sums.items()},
        "metrics": task_metrics(task.kind, predictions, evaluation.labels),
        "encoder_distance": round(_distance(model, encoder), 6),
        "steps": step,
        "seconds": round(time.perf_counter() - started, 2),
    }
    record["train_loss"] = record.pop("loss")
    return record


def _step(
    model: FinetuneModel,
    batch: dict[str, torch.Tensor],
    targets: torch.Tensor,
    regulariser: Regulariser,
    settings: RunSettings,
    noise_gen: torch.Generator,
    step: int,
    regression: bool,
) -> dict[str, float]:
    """Forward, loss = task loss (+ λ·L_gm) + the regulariser's penalty, backward."""
    rng = RngState.capture(targets.device)
    embeds = model.embed(batch)
    features, hidden = model.features(batch, embeds, output_hidden_states=regulariser.needs_hidden_states)
    if settings.lgm:
        task_loss, lgm, outputs = gradient_matching_terms(
            model.head, features, targets, regression=regression, gamma=settings.gamma, generator=noise_gen
        )
    else:
        outputs = model.head_outputs(features)
        task_loss = F.mse_loss(outputs, targets) if regression else F.cross_entropy(outputs, targets)
        lgm = task_loss.new_zeros(())
    penalty = regulariser.penalty(StepState(model, batch, embeds, outputs, hidden, rng, step))
    loss = task_loss + settings.lgm_lam * lgm + penalty if settings.lgm else task_loss + penalty
    loss.backward()
    parts = torch.stack([loss, task_loss, penalty, lgm]).detach().tolist()
    return dict(zip(("loss", "task_loss", "regulariser_penalty", "lgm_penalty"), parts, strict=True))


def predict(
    model: FinetuneModel,
    examples: list[dict[str, list[int]]],
    device: torch.device,
    pad_id: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Class ids (argmax) or scores of the examples, in eval mode (no dropout)."""
    model.eval()
    # Longest first: batches of similar length pad less.
    order = np.argsort([-len(e["input_ids"]) for e in examples], kind="stable")
    out: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            outputs = model(collate([examples[i] for i in index], pad_id, device)).float()
            values = outputs if model.regression else outputs.argmax(-1)
            if out is None:
                out = np.empty(len(examples), dtype=np.float32 if model.regression else np.int64)
            out[index] = values.cpu().numpy()
    model.train()
    assert out is not None
    return out


def _optimizer(model: FinetuneModel, settings: RunSettings, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights take no weight decay (BERT's recipe)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    head = {id(p) for p in model.head.parameters()}
    for name, param in model.named_parameters():
        no_decay = param.dim() < 2 or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((id(param) in head, no_decay), []).append(param)
    head_lr = settings.head_lr if settings.head_lr is not None else settings.lr
    param_groups = [
        {
            "params": params,
            "lr": head_lr if is_head else settings.lr,
            "weight_decay": 0.0 if no_decay else settings.weight_decay,
        }
        for (is_head, no_decay), params in groups.items()
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups, lr=settings.lr, fused=fused or None)


def _lr_factor(step: int, warm: int, total: int) -> float:
    if warm and step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def _distance(model: FinetuneModel, encoder: Encoder) -> float:
    """‖w − w⁰‖₂ over the encoder's weights: how far fine-tuning moved the backbone."""
    total = 0.0
    with torch.no_grad():
        for trained, pristine in zip(model.encoder.parameters(), encoder.model.parameters(), strict=True):
            total += float((trained.detach().cpu().double() - pristine.detach().double()).pow(2).sum())
    return math.sqrt(total)


def settings_record(settings: RunSettings) -> dict[str, Any]:
    """The settings as JSON-ready fields of a run's record."""
    record = asdict(settings)
    record["regulariser_settings"] = dict(settings.regulariser_settings)
    return record
