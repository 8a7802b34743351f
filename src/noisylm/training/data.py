"""Training and evaluation windows: deterministic from a seed, resumable, split over DDP ranks.

Every training window has a global *slot* index: iteration ``it``, micro-step ``j`` (over all ranks),
row ``b`` is slot ``(it * grad_accum + j) * batch_size + b``. What fills a slot depends only on the
seed and the slot index, never on the number of processes, so a run on 2 ranks sees exactly the windows
of a run on 1 rank with the same global batch, and a resumed run sees what it would have seen.

Two samplers:

- ``paired`` (common random numbers, the default): the clean text of the training set (train.bin
  without the noise spans) is read as one sequence, and clean window number ``n`` starts at a position
  drawn from ``(seed, n)``. A separate stream decides, slot by slot, whether the slot is a noise window
  (probability α = noise tokens / train tokens, read from the manifest), drawn from ``noise.bin``. A
  clean run and every noisy run of a sweep therefore see the same clean windows in the same order; a
  noisy run just has noise windows in between.
- ``uniform``: windows start anywhere in train.bin, uniformly at random (nanoGPT's ``get_batch``, the
  paper's setting); a window may straddle clean text and noise.

Random numbers come in blocks of `BLOCK` draws from ``numpy.random.default_rng([seed, stream, block])``,
so any window can be recomputed from its index without replaying the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError

BLOCK = 4096  # random draws per generator block
_CLEAN, _DECIDE, _NOISE, _UNIFORM, _EVAL = 0, 1, 2, 3, 4  # independent random streams


class _BlockDraws:
    """``draw(i)``: the i-th integer in [0, high) of stream ``(seed, stream)``, random access."""

    def __init__(self, seed: int, stream: int, high: int | None):
        self.seed, self.stream, self.high = seed, stream, high
        self._block, self._values = -1, np.empty(0)

    def _load(self, block: int) -> np.ndarray:
        if block != self._block:
            rng = np.random.default_rng([self.seed, self.stream, block])
            self._values = rng.random(BLOCK) if self.high is None else rng.integers(0, self.high, BLOCK)
            self._block = block
        return self._values

    def many(self, first: int, count: int) -> np.ndarray:
        """Draws ``first .. first + count - 1``."""
        parts, i = [], first
        while i < first + count:
            block, offset = divmod(i, BLOCK)
            take = min(BLOCK - offset, first + count - i)
            parts.append(self._load(block)[offset : offset + take])
            i += take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) int64 inputs
    y: torch.Tensor  # (B, T) int64 targets (x shifted by one)
    clean_tokens: int  # input tokens that came from clean text


class TrainWindows:
    """The training windows of one shard set.

    ``plan(it)`` decides what fills every slot of iteration ``it`` and advances the counters;
    ``batch(plan, rows)`` reads the windows of some rows of that plan. The counters (``state_dict``)
    are the data position a checkpoint stores.
    """

    def __init__(self, shards: ShardSet, block_size: int, sampler: str, seed: int):
        self.shards, self.block_size, self.sampler, self.seed = shards, block_size, sampler, seed
        self.train = shards.tokens("train")
        spans = shards.noise_spans() if hasattr(shards, "noise_spans") else _spans_from_manifest(shards)
        self.spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        n_train = len(self.train)
        n_noise = int(self.spans[:, 1].sum())
        self.noise_rate = n_noise / n_train if n_train else 0.0
        need = block_size + 1
        # The clean text as segments of train.bin: [train_start, clean_start, length].
        starts, pos, segs = 0, 0, []
        for offset, length in self.spans:
            if offset > pos:
                segs.append((pos, starts, offset - pos))
                starts += offset - pos
            pos = offset + length
        if pos < n_train:
            segs.append((pos, starts, n_train - pos))
            starts += n_train - pos
        self.clean_len = starts
        self._seg = np.asarray(segs, dtype=np.int64).reshape(-1, 3)
        # Noise tokens before position x of train.bin, for clean-token counts of uniform windows.
        self._span_cum = np.concatenate([[0], np.cumsum(self.spans[:, 1])])
        if sampler == "uniform":
            if n_train < need:
                raise NoisyLMError(
                    f"train split of {shards.path} has {n_train} tokens, fewer than block_size + 1 = {need}; "
                    "use a smaller block_size or more data"
                )
            self._uniform = _BlockDraws(seed, _UNIFORM, n_train - block_size)
        elif sampler == "paired":
            if self.clean_len < need:
                raise NoisyLMError(
                    f"train split of {shards.path} has {self.clean_len} clean tokens, fewer than "
                    f"block_size + 1 = {need}; use a smaller block_size or more data"
                )
            self._clean = _BlockDraws(seed, _CLEAN, self.clean_len - block_size)
            self._decide = _BlockDraws(seed, _DECIDE, None)
            if n_noise:
                if not shards.has("noise"):
                    raise NoisyLMError(
                        f"shard set {shards.path} has noise spans but no noise.bin; regenerate it with "
                        "`noisylm inject`"
                    )
                self.noise = shards.tokens("noise")
                if len(self.noise) < need:
                    raise NoisyLMError(
                        f"noise.bin of {shards.path} has {len(self.noise)} tokens, fewer than "
                        f"block_size + 1 = {need}; use sampler = 'uniform', a smaller block_size or larger α"
                    )
                self._noise = _BlockDraws(seed, _NOISE, len(self.noise) - block_size)
        else:
            raise NoisyLMError(f"unknown sampler {sampler!r}; use 'paired' or 'uniform'")
        self.slot = 0  # next slot to plan
        self.clean_count = 0  # clean windows drawn so far (paired)
        self.noise_count = 0  # noise windows drawn so far (paired)

    def describe(self) -> dict[str, Any]:
        """What a run directory records about its sampling."""
        return {
            "sampler": self.sampler,
            "seed": self.seed,
            "block_size": self.block_size,
            "train_tokens": len(self.train),
            "clean_tokens": self.clean_len,
            "noise_rate": self.noise_rate,
            "draws": f"numpy default_rng([seed, stream, block]), {BLOCK} draws per block",
        }

    def state_dict(self) -> dict[str, int]:
        return {"slot": self.slot, "clean_count": self.clean_count, "noise_count": self.noise_count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.slot, self.clean_count, self.noise_count = (
            int(state["slot"]),
            int(state["clean_count"]),
            int(state["noise_count"]),
        )

    def plan(self, n_slots: int) -> np.ndarray:
        """Decide the next ``n_slots`` slots: int64 array (n, 2) of [source, start] with source 0 = a
        clean window (start in clean coordinates, paired) or train.bin (uniform), 1 = noise.bin."""
        out = np.zeros((n_slots, 2), dtype=np.int64)
        if self.sampler == "uniform":
            out[:, 1] = self._uniform.many(self.slot, n_slots)
        else:
            is_noise = np.zeros(n_slots, dtype=bool)
            if self.noise_rate > 0:
                is_noise = self._decide.many(self.slot, n_slots) < self.noise_rate
            n_noise = int(is_noise.sum())
            out[is_noise, 0] = 1
            out[is_noise, 1] = self._noise.many(self.noise_count, n_noise) if n_noise else 0
            out[~is_noise, 1] = self._clean.many(self.clean_count, n_slots - n_noise)
            self.noise_count += n_noise
            self.clean_count += n_slots - n_noise
        self.slot += n_slots
        return out

    def _window(self, source: int, start: int) -> np.ndarray:
        n = self.block_size + 1
        if self.sampler == "uniform":
            return np.asarray(self.train[start : start + n])
        if source == 1:
            return np.asarray(self.noise[start : start + n])
        if len(self._seg) == 1:  # no noise or appended noise: the clean text is one piece
            base = self._seg[0, 0] - self._seg[0, 1]
            return np.asarray(self.train[base + start : base + start + n])
        pieces, need, pos = [], n, start
        i = int(np.searchsorted(self._seg[:, 1], pos, side="right")) - 1
        while need:
            train_start, clean_start, length = self._seg[i]
            offset = pos - clean_start
            take = min(need, length - offset)
            pieces.append(np.asarray(self.train[train_start + offset : train_start + offset + take]))
            need -= take
            pos += take
            i += 1
        return np.concatenate(pieces)

    def _noise_before(self, x: np.ndarray) -> np.ndarray:
        """Noise tokens in train.bin[0:x] for each x."""
        if not len(self.spans):
            return np.zeros_like(x)
        i = np.searchsorted(self.spans[:, 0], x, side="right") - 1
        inside = np.clip(x - self.spans[np.maximum(i, 0), 0], 0, self.spans[np.maximum(i, 0), 1])
        return np.where(i >= 0, self._span_cum[np.maximum(i, 0)] + inside, 0)

    def clean_tokens(self, plan: np.ndarray) -> int:
        """How many input tokens of the ``plan`` rows are clean text."""
        T = self.block_size
        if self.sampler == "uniform":
            starts = plan[:, 1]
            return int((T - (self._noise_before(starts + T) - self._noise_before(starts))).sum())
        return int((plan[:, 0] == 0).sum()) * T

    def batch(self, plan: np.ndarray, device: torch.device) -> Batch:
        """The windows of ``plan`` rows as (x, y) on ``device``."""
        windows = np.stack([self._window(int(s), int(p)) for s, p in plan]).astype(np.int64)
        clean = self.clean_tokens(plan)
        data = torch.from_numpy(windows)
        if device.type == "cuda":
            data = data.pin_memory().to(device, non_blocking=True)
        return Batch(x=data[:, :-1], y=data[:, 1:], clean_tokens=clean)


def _spans_from_manifest(shards: ShardSet) -> np.ndarray:
    record = shards.noise or {}
    return np.asarray(record.get("spans", []), dtype=np.int64).reshape(-1, 2)


@dataclass
class EvalSet:
    """Fixed eval windows of one token array: ``starts`` drawn once from the eval seed."""

    name: str
    tokens: np.ndarray
    starts: np.ndarray

    def batches(self, batch_size: int, block_size: int, rank: int = 0, world: int = 1):
        """This rank's windows (every ``world``-th), ``batch_size`` at a time, as int64 (x, y) arrays."""
        mine = self.starts[rank::world]
        for i in range(0, len(mine), batch_size):
            rows = [np.asarray(self.tokens[s : s + block_size + 1]) for s in mine[i : i + batch_size]]
            data = torch.from_numpy(np.stack(rows).astype(np.int64))
            yield data[:, :-1], data[:, 1:]


def eval_windows(
    name: str, tokens: np.ndarray, block_size: int, n_windows: int, seed: int, where: str
) -> EvalSet:
    """``n_windows`` window starts in ``tokens``, the same for every run with the same ``seed``."""
    if len(tokens) < block_size + 1:
        raise NoisyLMError(
            f"eval set {name!r} ({where}) has {len(tokens)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; use a smaller block_size or a larger split"
        )
    starts = np.random.default_rng([seed, _EVAL]).integers(0, len(tokens) - block_size, n_windows)
    return EvalSet(name=name, tokens=tokens, starts=starts)
