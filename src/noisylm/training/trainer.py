"""The training loop: `train(config, run_dir)` writes a run directory (see docs/contracts.md).

One process, or several under ``torchrun`` (DDP, or FSDP2 with ``parallelism = "fsdp"``; NCCL on GPUs,
gloo on CPU). The loop is nanoGPT's: cosine learning rate with warm-up, gradient accumulation,
clipping, AdamW, mixed precision, torch.compile, with evaluation on named sets, atomic checkpoints and
exact resume added.

It never waits for the GPU between log lines: the loss is summed on the device, a step whose loss or
gradients are not finite is skipped on the device (the fused AdamW's ``found_inf``, as the grad
scaler does), and the next micro-batch is read while the current one computes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from noisylm.artifacts import atomic_write_json, provenance, read_json
from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.model import GPT, GPTConfig, compile_gpt
from noisylm.runtime import (
    Distributed,
    autocast_context,
    choose_dtype,
    init_distributed,
    keep_freed_memory,
    resolve_device,
    resolve_dtype,
)
from noisylm.training import checkpoint as ckpt_io
from noisylm.training.config import TrainConfig
from noisylm.training.data import Batch, EvalSet, TrainWindows, eval_windows
from noisylm.training.evaluate import estimate_losses
from noisylm.training.metrics import MetricsLogger, peak_flops

BIG_WARMUP_ITERS = 100  # below this a divergence early in a run may come from too short a warm-up


def learning_rate(it: int, config: TrainConfig) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``min_lr`` at ``lr_decay_iters``."""
    if it < config.warmup_iters:
        return config.learning_rate * (it + 1) / (config.warmup_iters + 1)
    if not config.decay_lr:
        return config.learning_rate
    decay_iters = config.lr_decay_iters or config.max_iters
    if it >= decay_iters:
        return config.min_lr
    ratio = (it - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return config.min_lr + coeff * (config.learning_rate - config.min_lr)


# ---------------------------------------------------------------------------------------------------------
# Data and run directory set-up (everything that can fail is checked before the run directory is touched)


def open_training_data(config: TrainConfig, block_size: int) -> tuple[ShardSet, TrainWindows, list[EvalSet]]:
    shards = ShardSet.open(config.data)
    if config.vocab_size is not None and config.vocab_size != shards.vocab_size:
        raise NoisyLMError(
            f"vocab_size = {config.vocab_size} but the shard set {config.data} uses tokenizer "
            f"{shards.tokenizer!r} with {shards.vocab_size} tokens; remove vocab_size or use matching data"
        )
    seed = config.seed if config.data_seed is None else config.data_seed
    windows = TrainWindows(shards, block_size, config.sampler, seed)
    n_windows = config.eval_iters * config.batch_size
    sets = [
        eval_windows("val", shards.tokens("val"), block_size, n_windows, config.eval_seed, str(shards.path))
    ]
    if shards.has("noise") and shards.splits["noise"].tokens > 0:
        noise = shards.tokens("noise")
        sets.append(
            eval_windows("noise", noise, block_size, n_windows, config.eval_seed, f"{shards.path} noise.bin")
        )
    for name, directory in config.eval_sets.items():
        extra = ShardSet.open(directory)
        if (extra.tokenizer, extra.vocab_size) != (shards.tokenizer, shards.vocab_size):
            raise NoisyLMError(
                f"eval set {name!r} ({directory}) uses tokenizer {extra.tokenizer!r} "
                f"({extra.vocab_size} tokens) but the training data uses {shards.tokenizer!r} "
                f"({shards.vocab_size}); prepare it with --tokenizer {shards.tokenizer}"
            )
        sets.append(
            eval_windows(name, extra.tokens("val"), block_size, n_windows, config.eval_seed, directory)
        )
    return shards, windows, sets


def _data_record(shards: ShardSet) -> dict[str, Any]:
    noise = shards.noise or {}
    return {
        "path": str(Path(shards.path).resolve()),
        "tokenizer": shards.tokenizer,
        "vocab_size": shards.vocab_size,
        "eot_id": shards.eot_id,
        "train_sha256": shards.splits["train"].sha256,
        "train_tokens": shards.splits["train"].tokens,
        "noise": {
            k: noise.get(k) for k in ("kind", "alpha_achieved", "clean_tokens", "noise_tokens", "placement")
        }
        if noise
        else None,
    }


def _prepare_run_dir(
    run_dir: Path, resume: bool, overwrite: bool, model_config: GPTConfig, data: dict[str, Any]
) -> Path | None:
    """Check the run directory; return the checkpoint to resume from (None = start from scratch)."""
    if resume and run_dir.exists():
        config_path = run_dir / "config.json"
        if config_path.is_file():
            saved = read_json(config_path, "run config")
            if saved.get("model") != model_config.to_dict():
                raise NoisyLMError(
                    f"cannot resume {run_dir}: it was trained with model {saved.get('model')}, "
                    f"the config asks for {model_config.to_dict()}; use the same model or a new run dir"
                )
            old_sha = (saved.get("data") or {}).get("train_sha256")
            if old_sha and data["train_sha256"] and old_sha != data["train_sha256"]:
                raise NoisyLMError(
                    f"cannot resume {run_dir}: it was trained on different data (train.bin sha256 "
                    f"{old_sha[:12]}..., now {data['train_sha256'][:12]}...); use the same data or a new run"
                )
        return ckpt_io.latest_checkpoint(run_dir / "checkpoints")
    if run_dir.exists() and not resume and not overwrite:
        raise NoisyLMError(
            f"run directory {run_dir} already exists; pass --resume to continue it or --overwrite to "
            "replace it"
        )
    return None


# ---------------------------------------------------------------------------------------------------------
# The loop


def train(
    config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train a GPT on ``config.data`` and write ``run_dir`` (config.json, metrics.jsonl, checkpoints/,
    tb/, summary.json). ``resume``: continue from the newest checkpoint in ``run_dir`` (or start there
    when it has none). Returns the summary (also written to ``summary.json``)."""
    if not isinstance(config, TrainConfig):
        raise UsageError(f"train() needs a TrainConfig, got {type(config).__name__}")
    run_dir = Path(run_dir)
    ddp = init_distributed(config.device, config.parallelism)
    threads = torch.get_num_threads()
    try:
        return _train(config, run_dir, resume, overwrite, ddp)
    finally:
        torch.set_num_threads(threads)  # `threads` applies to this run only
        if ddp.owns_group:
            dist.destroy_process_group()


def resolve_compile(value: bool | str, device: torch.device) -> bool:
    """ "auto" → compile on CUDA GPUs only (on CPUs it is not faster, BENCHMARKS.md, and the numbers
    of a CPU run stay those of eager mode)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def shard_model(model: GPT, device: torch.device, world: int) -> None:
    """FSDP2: one unit per transformer block, then the root (embeddings, the tied output layer, ln_f)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        raise NoisyLMError(
            f"parallelism = 'fsdp' needs torch >= 2.6 (FSDP2), this is {torch.__version__}; upgrade torch "
            "or use parallelism = 'ddp'"
        ) from None
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _train(config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, ddp: Distributed) -> dict:
    if config.grad_accum % ddp.world:
        raise UsageError(
            f"grad_accum = {config.grad_accum} is not divisible by the {ddp.world} processes; "
            f"use a multiple of {ddp.world}"
        )
    device = resolve_device(config.device, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype, dtype_reason = choose_dtype(config.dtype, device)
    if config.threads is not None and device.type == "cpu":
        torch.set_num_threads(config.threads)
    compile_model = resolve_compile(config.compile, device)
    sharded = config.parallelism == "fsdp"

    # Everything that can fail on bad input, before the run directory is touched.
    if config.wandb_project and importlib.util.find_spec("wandb") is None:
        raise NoisyLMError("wandb_project is set but wandb is not installed; pip install wandb, or unset it")
    vocab = ShardSet.open(config.data).vocab_size
    model_config = config.model_config(vocab)
    shards, windows, eval_sets = open_training_data(config, model_config.block_size)
    data_record = _data_record(shards)
    if ddp.world == 1:
        resume_from = _prepare_run_dir(run_dir, resume, overwrite, model_config, data_record)
    else:  # rank 0 checks the run directory (the others would race with it) and tells them
        shared: list[Any] = [None, None]
        if ddp.is_main:
            try:
                found = _prepare_run_dir(run_dir, resume, overwrite, model_config, data_record)
                shared = [str(found) if found else None, None]
            except NoisyLMError as exc:
                shared = [None, str(exc)]
        dist.broadcast_object_list(shared, src=0)
        if shared[1] is not None:
            raise NoisyLMError(shared[1])
        resume_from = Path(shared[0]) if shared[0] else None

    torch.manual_seed(config.seed)  # identical initial weights for every run with this seed
    model = GPT(model_config)
    model.ce_chunk_tokens = config.ce_chunk_tokens
    num_params = model.num_params()
    state: dict[str, Any] = {}
    if resume_from is not None:
        state = ckpt_io.read_trainer_state(resume_from)
        if config.dtype == "auto" and state.get("dtype"):
            # `auto` resolved when the run started; a resume on another CPU or GPU keeps that dtype,
            # so the run goes on computing as it began
            dtype = resolve_dtype(state["dtype"], device)
            dtype_reason = f"auto: {state['dtype']}, as when this run started (its checkpoint records it)"
        if not ckpt_io.is_sharded(resume_from):
            if sharded:
                raise NoisyLMError(
                    f"cannot resume {resume_from} with parallelism = 'fsdp': it is an unsharded checkpoint "
                    "(model.safetensors); resume it with parallelism = 'ddp'"
                )
            ckpt_io.load_weights(model, resume_from)
    model.to(device)
    if sharded:
        if compile_model:  # compile each block before wrapping it, as FSDP2 recommends
            for block in model.transformer.h:
                block.compile()
        shard_model(model, device, ddp.world)
    optimizer = model.configure_optimizer(
        config.weight_decay, config.learning_rate, (config.beta1, config.beta2)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_iter, tokens, clean_tokens, last_eval = 0, 0, 0, {}
    if resume_from is not None:
        opt_state, rng_states = ckpt_io.load_training_state(resume_from)
        if ckpt_io.is_sharded(resume_from):
            ckpt_io.load_sharded_state(resume_from, model, optimizer)
        else:
            try:
                optimizer.load_state_dict(opt_state["optimizer"])
            except (ValueError, KeyError) as exc:
                raise NoisyLMError(
                    f"optimizer state in {resume_from} does not fit this model ({exc}); start a new run"
                ) from None
        if opt_state.get("scaler"):
            scaler.load_state_dict(opt_state["scaler"])
        windows.load_state_dict(state["sampler"])
        start_iter, tokens, clean_tokens = (
            int(state["iter"]),
            int(state["tokens"]),
            int(state["clean_tokens"]),
        )
        last_eval = state.get("eval") or {}
        if len(rng_states) == ddp.world:
            ckpt_io.set_rng_state(rng_states[ddp.rank], device)
        else:  # a different number of processes: dropout masks cannot continue exactly
            torch.manual_seed(config.seed + 1000 * start_iter + ddp.rank)
    elif ddp.rank:
        torch.manual_seed(config.seed + ddp.rank)  # different dropout masks on each rank

    if ddp.is_main:
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # --overwrite, and all inputs were valid
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "train": config.to_dict(),
            "model": model_config.to_dict(),
            "data": data_record,
            "sampling": windows.describe(),
            "eval_sets": {s.name: len(s.starts) for s in eval_sets},
            "world_size": ddp.world,
            "parallelism": config.parallelism if ddp.world > 1 or sharded else "single",
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "dtype_reason": dtype_reason,
            "compile": compile_model,
            "tokens_per_iter": config.batch_size * config.grad_accum * model_config.block_size,
            "num_params": num_params,
            "resumed_from": str(resume_from) if resume_from else None,
            "provenance": provenance(config.to_dict(), config.seed),
        }
        atomic_write_json(run_dir / "config.json", record)
        shards.copy_tokenizer_to(run_dir)  # a trained BPE travels with the checkpoints
        (run_dir / "summary.json").unlink(missing_ok=True)  # written again at the end
        logger = MetricsLogger(
            run_dir,
            config.tensorboard,
            config.wandb_project,
            config.wandb_run_name,
            record,
            keep_until_iter=start_iter if resume_from is not None else None,
        )
    else:
        logger = None
    if ddp.world > 1:
        dist.barrier()

    compiled = compile_gpt(model) if compile_model and not sharded else model
    if ddp.world > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        compiled = DistributedDataParallel(
            compiled, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast = autocast_context(device, dtype)
    loop = _Loop(
        config, run_dir, ddp, device, model, compiled, optimizer, scaler, autocast, windows, eval_sets, logger
    )
    loop.sharded, loop.dtype = sharded, dtype
    if state:
        loop.restore_counters(state)
    loop.last_eval = last_eval  # a resumed run that has nothing left to do still reports its losses
    try:
        with keep_freed_memory():  # only the loop: set-up's freed blocks would leave holes in the heap
            return loop.run(start_iter, tokens, clean_tokens, resume_from)
    finally:
        if logger is not None:
            logger.close()


class _Batches:
    """This rank's micro-batches of successive iterations, each read one ahead: the next micro-batch
    is gathered (and on CUDA its copy from pinned memory started) while the current one computes.

    Reading ahead plans the next iteration early, so the sampler's counters run ahead of the loop;
    `position(it)` is the sampler state right after iteration ``it`` was planned, what a checkpoint
    taken after iteration ``it`` must store.
    """

    def __init__(self, windows: TrainWindows, batch_size: int, grad_accum: int, ddp: Distributed, device):
        self.windows, self.batch_size, self.ddp, self.device = windows, batch_size, ddp, device
        self.slots_per_iter = batch_size * grad_accum
        self.accum_local = grad_accum // ddp.world
        self.plans: dict[int, np.ndarray] = {}  # iteration (0-based) -> its plan
        self.positions: dict[int, dict[str, int]] = {}  # iterations done -> sampler state
        self.next: tuple[int, int, Batch] | None = None

    def start(self, it: int, stop: int) -> None:
        """Begin at iteration ``it`` (0-based); nothing is read for iteration ``stop`` or later."""
        self.stop = stop
        self.positions = {it: self.windows.state_dict()}
        self.next = None
        if it < stop:
            self._plan(it)
            self.next = (it, 0, self._read(it, 0))

    def _plan(self, it: int) -> None:
        self.plans = {k: v for k, v in self.plans.items() if k >= it - 1}
        self.plans[it] = self.windows.plan(self.slots_per_iter)
        self.positions = {k: v for k, v in self.positions.items() if k >= it}
        self.positions[it + 1] = self.windows.state_dict()

    def _read(self, it: int, m: int) -> Batch:
        micro = m * self.ddp.world + self.ddp.rank  # global micro-step of this rank
        B = self.batch_size
        return self.windows.batch(self.plans[it][micro * B : (micro + 1) * B], self.device)

    def current(self) -> Batch:
        return self.next[2]

    def advance(self) -> None:
        """Read the micro-batch after the current one (the first of the next iteration after the last)."""
        it, m, _ = self.next
        if m + 1 < self.accum_local:
            self.next = (it, m + 1, self._read(it, m + 1))
        elif it + 1 < self.stop:
            self._plan(it + 1)
            self.next = (it + 1, 0, self._read(it + 1, 0))
        else:
            self.next = None

    def plan(self, it: int) -> np.ndarray:
        return self.plans[it]

    def position(self, done: int) -> dict[str, int]:
        return self.positions[done]


# What `_Loop.acc` holds, on the device: the sum of this rank's losses of the steps taken since the last
# log line, the steps skipped since then, the current run of bad steps, the longest run since the last
# log line, the last iteration whose step was taken, and the steps skipped in the whole run.
_ACC = ("loss", "skipped", "streak", "longest", "last_taken", "skipped_total")
_LOSS, _SKIPPED, _STREAK, _LONGEST, _LAST_TAKEN, _SKIPPED_TOTAL = range(len(_ACC))


class _Loop:
    """The iterations, evaluation, logging and checkpointing of one run."""

    def __init__(
        self,
        config,
        run_dir,
        ddp,
        device,
        model,
        compiled,
        optimizer,
        scaler,
        autocast,
        windows,
        eval_sets,
        logger,
    ):
        self.config, self.run_dir, self.ddp, self.device = config, run_dir, ddp, device
        self.model, self.compiled, self.optimizer, self.scaler = model, compiled, optimizer, scaler
        self.autocast, self.windows, self.eval_sets, self.logger = autocast, windows, eval_sets, logger
        self.block = model.config.block_size
        self.peak = peak_flops(device)
        self.sharded = False  # FSDP
        self.dtype = torch.float32  # the autocast dtype
        self.last_eval: dict[str, float] = {}
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Fused AdamW takes the skip flag on the device; other optimizers (MPS) need it on the host.
        self.fused = bool(optimizer.param_groups[0].get("fused"))
        # float64 sums, as Python's floats had them (MPS has no float64)
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.acc = torch.zeros(len(_ACC), dtype=acc_dtype, device=device)

    def restore_counters(self, state: dict[str, Any]) -> None:
        """The skip counters of a checkpoint's trainer state (a resumed run goes on counting)."""
        self.acc[_LAST_TAKEN] = state.get("last_step_taken", state["iter"])
        self.acc[_SKIPPED_TOTAL] = state.get("skipped_steps", 0)

    # --- evaluation and checkpoints --------------------------------------------------------------------

    def evaluate(self, it: int, tokens: int, clean_tokens: int) -> None:
        rank, world = self.ddp.rank, self.ddp.world
        if self.sharded and not self._eval_splits_evenly():
            rank, world = 0, 1  # FSDP: every rank must run as many forward passes; each does all windows
        losses = estimate_losses(
            self.model, self.eval_sets, self.config.batch_size, self.device, self.autocast, rank, world
        )
        self.last_eval = losses
        if self.logger is not None:
            self.logger.log({"iter": it, "tokens": tokens, "clean_tokens": clean_tokens, "eval": losses})

    def _eval_splits_evenly(self) -> bool:
        """Whether every rank gets as many eval batches (estimate_losses gives rank r windows r::world)."""
        B, world = self.config.batch_size, self.ddp.world
        for s in self.eval_sets:
            batches = {math.ceil(len(range(r, len(s.starts), world)) / B) for r in range(world)}
            if len(batches) > 1:
                return False
        return True

    def state_is_finite(self) -> torch.Tensor:
        """1 when every weight and every AdamW state tensor is finite (on every rank), else 0; on the
        device."""
        tensors = list(self.params)
        for per_param in self.optimizer.state.values():
            tensors += [v for v in per_param.values() if torch.is_tensor(v) and v.is_floating_point()]
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # FSDP: this rank's shard
        finite = torch.stack([torch.isfinite(t).all() for t in local]).all().to(torch.int32)
        if self.sharded and self.ddp.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return finite

    def save(self, it: int, tokens: int, clean_tokens: int, batches: _Batches, extra: dict[str, Any]) -> Path:
        rng = [ckpt_io.rng_state(self.device)]
        if self.ddp.world > 1:
            rng = [None] * self.ddp.world
            dist.all_gather_object(rng, ckpt_io.rng_state(self.device))
        shards = self.windows.shards
        state = {
            "tokens": tokens,
            "clean_tokens": clean_tokens,
            "sampler": batches.position(it),
            "lr_schedule": {"iter": it, "lr_next": learning_rate(it, self.config)},
            "model": self.model.config.to_dict(),
            "data": {
                "tokenizer": shards.tokenizer,
                "vocab_size": shards.vocab_size,
                "path": str(shards.path),
            },
            "train": self.config.to_dict(),
            "dtype": str(self.dtype).removeprefix("torch."),  # what `auto` resolved to, kept on resume
            "eval": self.last_eval,
            **extra,
        }
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        root = self.run_dir / "checkpoints"
        keep = self.config.keep_checkpoints
        if self.sharded:
            return ckpt_io.save_sharded_checkpoint(
                root, it, self.model, self.optimizer, state, rng, scaler, keep
            )
        path = ckpt_io.checkpoint_name(it)
        if self.ddp.is_main:
            path = ckpt_io.save_checkpoint(root, it, self.model, self.optimizer, state, rng, scaler, keep)
        if self.ddp.world > 1:
            dist.barrier()
        return Path(path)

    def fail(self, it: int, message: str) -> None:
        if self.ddp.is_main:
            last = ckpt_io.latest_checkpoint(self.run_dir / "checkpoints")
            atomic_write_json(
                self.run_dir / "summary.json",
                {"status": "failed", "error": message, "iter": it, "checkpoint": str(last) if last else None},
            )

    def divergence_message(self, what: str, it: int) -> str:
        """One line: what happened, the checkpoint to go back to, and only the changes that apply."""
        cfg = self.config
        changes = [f"lower learning_rate (now {cfg.learning_rate:g})"]
        if cfg.grad_clip == 0:
            changes.append("turn on grad_clip (now 0), e.g. 1.0")
        if cfg.warmup_iters < BIG_WARMUP_ITERS or it <= 2 * cfg.warmup_iters:
            changes.append(f"raise warmup_iters (now {cfg.warmup_iters})")
        if self.dtype == torch.float16:
            changes.append("use dtype = 'bfloat16' (or 'float32')")
        elif self.dtype == torch.bfloat16:
            changes.append("use dtype = 'float32'")
        fixes = "; ".join(changes)
        last = ckpt_io.latest_checkpoint(self.run_dir / "checkpoints")
        if last is not None:
            iteration = ckpt_io.read_trainer_state(last)["iter"]
            where = (
                f"the newest checkpoint, {last.name} (iteration {iteration}, all weights and AdamW state "
                f"finite), is kept; to continue from it run again with --resume and: {fixes}"
            )
        else:
            where = f"no checkpoint was written after a good step; start again with --overwrite and: {fixes}"
        return f"{what}; stopped at iteration {it}; {where}"

    # --- the loop ----------------------------------------------------------------------------------------

    def step(self, loss_sum: torch.Tensor) -> torch.Tensor:
        """Clip and apply the accumulated gradients, unless the loss or a gradient is not finite: then
        the optimizer step is a no-op (weights, AdamW moments and step count unchanged). Returns the
        flags ``[skipped, bad]`` on the device; ``bad`` (a non-finite loss, or a non-finite gradient
        in bf16/fp32) counts towards ``max_bad_steps``. A float16 grad scaler's own overflow skips are
        not bad: they lower the scale."""
        self.scaler.unscale_(self.optimizer)  # no-op unless float16
        norm = _grad_norm([p.grad for p in self.params if p.grad is not None])
        if self.config.grad_clip > 0:
            _clip_grads(self.params, self.config.grad_clip, norm)
        loss_ok = torch.isfinite(loss_sum)
        skip = ~(loss_ok & torch.isfinite(norm))
        bad = ~loss_ok if self.scaler.is_enabled() else skip
        flags = torch.stack([skip, bad]).float()
        if self.ddp.world > 1:  # every rank must take the same decision (the losses differ per rank)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if self.fused:
            self.optimizer.found_inf = flags[0]  # fused AdamW: no update at all when 1 (GradScaler's API)
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not flags[0].item():
            self.optimizer.step()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return flags

    def run(self, start_iter: int, tokens: int, clean_tokens: int, resumed: Path | None) -> dict[str, Any]:
        cfg, ddp = self.config, self.ddp
        tokens_per_iter = cfg.batch_size * cfg.grad_accum * self.block
        batches = _Batches(self.windows, cfg.batch_size, cfg.grad_accum, ddp, self.device)
        accum_local = batches.accum_local
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.max_iters,
            initial=start_iter,
            desc="train",
            unit="it",
            disable=not (cfg.progress and ddp.is_main),
            dynamic_ncols=True,
        )
        if start_iter == 0 and resumed is None and cfg.eval_at_start:
            self.evaluate(0, 0, 0)
        started = time.perf_counter()
        acc = self.acc  # the bookkeeping on the device, see `_ACC`
        log_steps, log_tokens, log_time = 0, 0, time.perf_counter()
        it = start_iter
        train_loss: float | None = None
        save_pending = False
        self.model.train()
        batches.start(it, cfg.max_iters)
        while it < cfg.max_iters:
            lr = learning_rate(it, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            plan = batches.plan(it)
            loss_sum = torch.zeros((), device=self.device)
            for m in range(accum_local):
                batch = batches.current()
                sync = ddp.world == 1 or self.sharded or m == accum_local - 1  # DDP: all-reduce once
                with contextlib.nullcontext() if sync else self.compiled.no_sync():
                    with self.autocast:
                        _, loss = self.compiled(batch.x, batch.y)
                    batches.advance()  # read the next micro-batch while this one computes
                    loss_sum += loss.detach().float()
                    self.scaler.scale(loss / accum_local).backward()
            skip, bad = self.step(loss_sum)
            it += 1
            # No waiting for the GPU here: the bookkeeping stays on the device until the next log line.
            acc[_LOSS] += torch.where(skip > 0, 0.0, loss_sum.to(acc.dtype) / cfg.grad_accum)
            acc[_SKIPPED] += skip
            acc[_SKIPPED_TOTAL] += skip
            acc[_STREAK] = (acc[_STREAK] + 1) * bad
            acc[_LONGEST] = torch.maximum(acc[_LONGEST], acc[_STREAK])
            acc[_LAST_TAKEN] = torch.where(skip > 0, acc[_LAST_TAKEN], it)
            tokens += tokens_per_iter
            clean_tokens += self.windows.clean_tokens(plan)
            log_steps, log_tokens = log_steps + 1, log_tokens + tokens_per_iter

            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                totals = acc.clone()
                if ddp.world > 1:
                    dist.all_reduce(totals[:1])  # this rank's losses; the other entries agree on every rank
                totals = totals.tolist()  # the one wait for the device per log line
                acc[_LOSS], acc[_SKIPPED], acc[_LONGEST] = 0.0, 0.0, acc[_STREAK]
                now = time.perf_counter()
                skipped = int(totals[_SKIPPED])
                train_loss = totals[_LOSS] / (log_steps - skipped) if log_steps > skipped else None
                if totals[_LONGEST] >= cfg.max_bad_steps:
                    self.stop(
                        f"{int(totals[_LONGEST])} consecutive steps had a non-finite loss or gradient and "
                        f"were skipped (the weights are those after iteration {int(totals[_LAST_TAKEN])})",
                        it,
                        bar,
                    )
                tokens_per_s = log_tokens / max(now - log_time, 1e-9)
                mfu = None
                if self.peak:  # tokens_per_s counts every process; the peak is one GPU's
                    mfu = self.model.flops_per_token() * tokens_per_s / (self.peak * ddp.world)
                if self.logger is not None:
                    self.logger.log(
                        {
                            "iter": it,
                            "tokens": tokens,
                            "clean_tokens": clean_tokens,
                            "lr": lr,
                            "train_loss": train_loss,
                            "skipped_steps": skipped,
                            "tokens_per_s": tokens_per_s,
                            "mfu": mfu,
                        }
                    )
                shown = f"{train_loss:.4f}" if train_loss is not None else "skipped"
                bar.set_postfix(loss=shown, tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                log_steps, log_tokens, log_time = 0, 0, now
            bar.update(1)
            do_eval = it % cfg.eval_interval == 0 or it == cfg.max_iters
            save_pending |= bool(cfg.checkpoint_interval and it % cfg.checkpoint_interval == 0)
            if do_eval or save_pending or it == cfg.max_iters:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # the training work queued so far counts as training
                paused = time.perf_counter()
                if do_eval:
                    self.evaluate(it, tokens, clean_tokens)
                if save_pending or it == cfg.max_iters:
                    finite, streak, last_taken, skipped_total = torch.stack(
                        [self.state_is_finite().to(acc.dtype), *acc[[_STREAK, _LAST_TAKEN, _SKIPPED_TOTAL]]]
                    ).tolist()
                    if not finite:  # cannot happen with the skip in `step`: the last line of defence
                        self.stop(
                            "the weights or the AdamW state are not finite; no checkpoint was written",
                            it,
                            bar,
                        )
                    # In a run of bad steps the weights may already be ruined (the step before it was
                    # taken): wait for a good step, so that the newest checkpoint is one to go back to.
                    if not streak or it == cfg.max_iters:
                        extra = {"last_step_taken": int(last_taken), "skipped_steps": int(skipped_total)}
                        self.save(it, tokens, clean_tokens, batches, extra)
                        save_pending = False
                log_time += time.perf_counter() - paused  # eval and checkpoints do not count against tokens/s
        bar.close()
        last = ckpt_io.latest_checkpoint(self.run_dir / "checkpoints")
        summary = {
            "status": "finished",
            "iterations": it,
            "tokens": tokens,
            "clean_tokens": clean_tokens,
            "train_loss": train_loss if train_loss is not None and math.isfinite(train_loss) else None,
            "skipped_steps": int(acc[_SKIPPED_TOTAL].item()),
            "eval": self.last_eval,
            "checkpoint": str(last) if last else None,
            "wall_s": time.perf_counter() - started,
            "resumed_from": str(resumed) if resumed else None,
            "provenance": provenance(cfg.to_dict(), cfg.seed),
        }
        if ddp.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def stop(self, what: str, it: int, bar) -> None:
        message = self.divergence_message(what, it)
        self.fail(it, message)
        bar.close()
        raise NoisyLMError(message)


def _grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of the gradients, a plain tensor on the device (FSDP: over all shards)."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: what clip_grad_norm_ computes
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _clip_grads(params: list[torch.nn.Parameter], max_norm: float, norm: torch.Tensor) -> None:
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
