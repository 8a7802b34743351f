"""Next-token-prediction loss: during training (`estimate_losses`) and of a checkpoint on demand.

`load_eval_model` (a checkpoint on its device, in eval mode, with its autocast) and `token_losses` (the
per-token losses of fixed windows) are the one place where a trained model is evaluated token by token:
`evaluate_checkpoint` (`noisylm eval`), the model detector of `noisylm scan` and `noisylm theory` use them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from noisylm.artifacts import atomic_path, provenance
from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.model import GPT
from noisylm.training.data import EvalSet


@torch.no_grad()
def estimate_losses(
    model: GPT,
    eval_sets: list[EvalSet],
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Mean per-token loss of ``model`` on each set's fixed windows; the windows are split over DDP
    ranks and the sums all-reduced, so every rank returns the same numbers."""
    was_training = model.training
    model.eval()
    block = model.config.block_size
    sums = torch.zeros(len(eval_sets), 2, dtype=torch.float64, device=device)
    for i, eval_set in enumerate(eval_sets):
        for x, y in eval_set.batches(batch_size, block, rank, world):
            x, y = x.to(device), y.to(device)
            with autocast or contextlib.nullcontext():
                _, loss = model(x, y)
            sums[i, 0] += loss.double() * y.numel()
            sums[i, 1] += y.numel()
    if world > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    return {s.name: (sums[i, 0] / sums[i, 1]).item() for i, s in enumerate(eval_sets)}


def parse_eval_sets(items: list[str]) -> dict[str, str]:
    """``["docs=data/docs", ...]`` → ``{"docs": "data/docs"}``; a bare DIR is named after its folder."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq:
            name, path = Path(item).name, item
        if not name or not path:
            raise UsageError(f"--on {item!r} is not NAME=DIR; e.g. --on docs=data/python-docs")
        if name in out:
            raise UsageError(f"eval set name {name!r} given twice; give each --on a different NAME")
        out[name] = path
    return out


@dataclass
class EvalModel:
    """A checkpoint's GPT ready for evaluation: on its device, in eval mode, with the autocast context of
    the requested dtype, its trainer state and the checkpoint directory it came from."""

    model: GPT
    state: dict[str, Any]
    path: Path
    device: torch.device
    autocast: contextlib.AbstractContextManager


def load_eval_model(ckpt: str | os.PathLike, device: str = "auto", dtype: str = "float32") -> EvalModel:
    """Load a checkpoint (or a run directory's newest one) for evaluation: ``device`` and ``dtype`` as
    `noisylm.runtime` resolves them ("auto", "cpu", "cuda", ...; "float32", "bfloat16", ...)."""
    from noisylm.runtime import autocast_context, resolve_device, resolve_dtype
    from noisylm.training.checkpoint import load_model

    dev = resolve_device(device)
    ctx = autocast_context(dev, resolve_dtype(dtype, dev))
    model, state, path = load_model(ckpt, dev)
    model.eval()
    return EvalModel(model, state, path, dev, ctx)


@torch.no_grad()
def token_losses(
    model: GPT,
    tokens: np.ndarray,
    starts: np.ndarray | Sequence[int],
    *,
    length: int | None = None,
    batch_size: int = 16,
    wrap: bool = False,
    autocast: contextlib.AbstractContextManager | None = None,
    out: np.ndarray | None = None,
    progress: bool | None = False,
) -> np.ndarray:
    """Next-token losses (nats) of ``model`` on the windows ``tokens[s : s + length + 1]``.

    Entry ``[i, j]`` is −log p(tokens[s_i + j + 1] | tokens[s_i : s_i + j + 1]): every window is its own
    context, ``length`` (default: the model's block size) predictions long. With ``wrap`` a window
    continues cyclically past the end of ``tokens``. Windows go through the model ``batch_size`` at a
    time, on the model's device, inside ``autocast``. Returns float64 of shape (windows, length), or
    fills ``out`` (any float dtype of that shape: the model's float32 values are stored exactly).
    """
    from tqdm import tqdm

    length = model.config.block_size if length is None else int(length)
    starts = np.asarray(starts, dtype=np.int64)
    if out is None:
        out = np.empty((len(starts), length), dtype=np.float64)
    device = next(model.parameters()).device
    offsets = np.arange(length + 1)
    for i in tqdm(range(0, len(starts), batch_size), desc="model loss", disable=not progress):
        chunk = starts[i : i + batch_size]
        if wrap:
            rows = np.asarray(tokens[(chunk[:, None] + offsets[None, :]) % len(tokens)], dtype=np.int64)
        else:
            rows = np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in chunk])
        batch = torch.from_numpy(rows).to(device)
        with autocast or contextlib.nullcontext():
            losses = model.token_losses(batch[:, :-1], batch[:, 1:])
        out[i : i + len(rows)] = losses.double().cpu().numpy()
    return out


def stream_token_losses(
    model: GPT,
    tokens: np.ndarray,
    *,
    length: int | None = None,
    batch_size: int = 16,
    autocast: contextlib.AbstractContextManager | None = None,
    out: np.ndarray | None = None,
    progress: bool | None = False,
) -> np.ndarray:
    """The loss of every token of ``tokens`` but the first, each predicted exactly once.

    The stream is cut into consecutive windows of ``length`` predictions (default: the block size; the
    last window is shorter), so entry ``i`` = −log p(token i+1 | the tokens before it in its window).
    Returns float32 of length ``len(tokens) − 1``, or fills ``out`` (that length).
    """
    length = model.config.block_size if length is None else int(length)
    predictions = max(len(tokens) - 1, 0)
    if out is None:
        out = np.empty(predictions, dtype=np.float32)
    full = predictions // length
    options = {"batch_size": batch_size, "autocast": autocast}
    token_losses(
        model,
        tokens,
        np.arange(full, dtype=np.int64) * length,
        length=length,
        out=out[: full * length].reshape(full, length),
        progress=progress,
        **options,
    )
    tail = predictions - full * length
    if tail:  # the last, shorter window
        token_losses(model, tokens, [full * length], length=tail, out=out[full * length :][None], **options)
    return out


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: str | os.PathLike,
    eval_sets: dict[str, str | os.PathLike],
    split: str = "val",
    max_tokens: int | None = None,
    batch_size: int = 8,
    per_token_path: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Loss of a checkpoint on the ``split`` of each named shard set.

    Each split (its first ``max_tokens`` tokens, or all of it) is cut into consecutive windows of
    ``block_size`` predictions, so every token after the first is predicted exactly once. With
    ``per_token_path`` (``.npz``) the per-token losses are saved: array ``NAME`` of float32, entry
    ``i`` = -log p(token i+1 | the tokens before it in its window).

    Returns ``{"checkpoint", "iter", "split", "eval": {name: {"loss", "tokens"}}}``.
    """
    if not eval_sets:
        raise UsageError("no eval sets given; pass --on NAME=DIR (a shard set directory)")
    if max_tokens is not None and max_tokens < 2:
        raise UsageError(f"max_tokens must be >= 2, got {max_tokens}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if per_token_path is not None:
        per_token_path = Path(per_token_path)
        if per_token_path.suffix != ".npz":
            raise UsageError(f"per-token output {per_token_path} must end in .npz")
        if per_token_path.exists() and not overwrite:
            raise NoisyLMError(f"output {per_token_path} already exists; pass --overwrite to replace it")
    loaded = load_eval_model(ckpt, device, dtype)
    model, state = loaded.model, loaded.state
    tokenizer = state.get("data", {}).get("tokenizer")
    results, arrays = {}, {}
    for name, directory in eval_sets.items():
        shards = ShardSet.open(directory)
        if shards.vocab_size != model.config.vocab_size or (tokenizer and shards.tokenizer != tokenizer):
            raise NoisyLMError(
                f"eval set {name!r} ({directory}) uses tokenizer {shards.tokenizer!r} with vocab "
                f"{shards.vocab_size}, the model {tokenizer!r} with {model.config.vocab_size}; "
                "prepare it with the model's tokenizer"
            )
        tokens = shards.tokens(split)
        n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
        if n < 2:
            raise NoisyLMError(f"split {split!r} of {directory} has {n} tokens; it needs at least 2")
        losses = stream_token_losses(model, tokens[:n], batch_size=batch_size, autocast=loaded.autocast)
        results[name] = {"loss": float(losses.astype(np.float64).mean()), "tokens": int(n - 1)}
        arrays[name] = losses
    if per_token_path is not None:
        with atomic_path(per_token_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {
        "checkpoint": str(loaded.path),
        "iter": state.get("iter"),
        "split": split,
        "eval": results,
        "per_token": str(per_token_path) if per_token_path is not None else None,
        "provenance": provenance({"eval_sets": {k: str(v) for k, v in eval_sets.items()}, "split": split}),
    }
