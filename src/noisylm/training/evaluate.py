"""Next-token-prediction loss on named token sets: during training and on demand."""

from __future__ import annotations

import contextlib
import os
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
    from noisylm.runtime import autocast_context, resolve_device, resolve_dtype
    from noisylm.training.checkpoint import load_model

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
    dev = resolve_device(device)
    model, state, path = load_model(ckpt, dev)
    model.eval()
    ctx = autocast_context(dev, resolve_dtype(dtype, dev))
    block = model.config.block_size
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
        losses = np.empty(n - 1, dtype=np.float32)
        starts = list(range(0, n - 1, block))
        for i in range(0, len(starts), batch_size):
            group = starts[i : i + batch_size]
            full = [s for s in group if s + block + 1 <= n]
            rest = [s for s in group if s + block + 1 > n]  # the last, shorter window
            for rows, length in ((full, block), *(([s], n - 1 - s) for s in rest)):
                if not rows:
                    continue
                data = np.stack([np.asarray(tokens[s : s + length + 1]) for s in rows]).astype(np.int64)
                data = torch.from_numpy(data).to(dev)
                with ctx:
                    token_losses = model.token_losses(data[:, :-1], data[:, 1:]).float().cpu().numpy()
                for row, s in enumerate(rows):
                    losses[s : s + length] = token_losses[row]
        results[name] = {"loss": float(losses.astype(np.float64).mean()), "tokens": int(n - 1)}
        arrays[name] = losses
    if per_token_path is not None:
        with atomic_path(per_token_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {
        "checkpoint": str(path),
        "iter": state.get("iter"),
        "split": split,
        "eval": results,
        "per_token": str(per_token_path) if per_token_path is not None else None,
        "provenance": provenance({"eval_sets": {k: str(v) for k, v in eval_sets.items()}, "split": split}),
    }
