"""The training loop: `train(config, run_dir)` writes a run directory (see docs/contracts.md).

One process, or several under ``torchrun`` (DDP; NCCL on GPUs, gloo on CPU). The loop is nanoGPT's:
cosine learning rate with warm-up, gradient accumulation, clipping, AdamW, mixed precision, with
evaluation on named sets, atomic checkpoints and exact resume added.
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

import torch
import torch.distributed as dist

from noisylm.artifacts import atomic_write_json, provenance, read_json
from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.model import GPT, GPTConfig
from noisylm.runtime import (
    Distributed,
    autocast_context,
    init_distributed,
    resolve_device,
    resolve_dtype,
)
from noisylm.training import checkpoint as ckpt_io
from noisylm.training.config import TrainConfig
from noisylm.training.data import EvalSet, TrainWindows, eval_windows
from noisylm.training.evaluate import estimate_losses
from noisylm.training.metrics import MetricsLogger, peak_flops


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
    ddp = init_distributed(config.device)
    threads = torch.get_num_threads()
    try:
        return _train(config, run_dir, resume, overwrite, ddp)
    finally:
        torch.set_num_threads(threads)  # `threads` applies to this run only
        if ddp.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, ddp: Distributed) -> dict:
    if config.grad_accum % ddp.world:
        raise UsageError(
            f"grad_accum = {config.grad_accum} is not divisible by the {ddp.world} processes; "
            f"use a multiple of {ddp.world}"
        )
    device = resolve_device(config.device, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = resolve_dtype(config.dtype, device)
    if config.threads is not None and device.type == "cpu":
        torch.set_num_threads(config.threads)

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
    model.to(device)
    optimizer = model.configure_optimizer(
        config.weight_decay, config.learning_rate, (config.beta1, config.beta2)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_iter, tokens, clean_tokens, last_eval = 0, 0, 0, {}
    if resume_from is not None:
        state = ckpt_io.read_trainer_state(resume_from)
        ckpt_io.load_weights(model, resume_from)
        opt_state, rng_states = ckpt_io.load_training_state(resume_from)
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
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "tokens_per_iter": config.batch_size * config.grad_accum * model_config.block_size,
            "num_params": model.num_params(),
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

    compiled = torch.compile(model) if config.compile else model
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        compiled = DistributedDataParallel(
            compiled, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast = autocast_context(device, dtype)
    loop = _Loop(
        config, run_dir, ddp, device, model, compiled, optimizer, scaler, autocast, windows, eval_sets, logger
    )
    loop.last_eval = last_eval  # a resumed run that has nothing left to do still reports its losses
    try:
        return loop.run(start_iter, tokens, clean_tokens, resume_from)
    finally:
        if logger is not None:
            logger.close()


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
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint: Path | None = None

    def evaluate(self, it: int, tokens: int, clean_tokens: int) -> None:
        losses = estimate_losses(
            self.model,
            self.eval_sets,
            self.config.batch_size,
            self.device,
            self.autocast,
            self.ddp.rank,
            self.ddp.world,
        )
        self.last_eval = losses
        if self.logger is not None:
            self.logger.log({"iter": it, "tokens": tokens, "clean_tokens": clean_tokens, "eval": losses})

    def save(self, it: int, tokens: int, clean_tokens: int) -> None:
        rng = [ckpt_io.rng_state(self.device)]
        if self.ddp.world > 1:
            rng = [None] * self.ddp.world
            dist.all_gather_object(rng, ckpt_io.rng_state(self.device))
        if self.ddp.is_main:
            shards = self.windows.shards
            state = {
                "tokens": tokens,
                "clean_tokens": clean_tokens,
                "sampler": self.windows.state_dict(),
                "lr_schedule": {"iter": it, "lr_next": learning_rate(it, self.config)},
                "model": self.model.config.to_dict(),
                "data": {
                    "tokenizer": shards.tokenizer,
                    "vocab_size": shards.vocab_size,
                    "path": str(shards.path),
                },
                "train": self.config.to_dict(),
                "eval": self.last_eval,
            }
            scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
            self.last_checkpoint = ckpt_io.save_checkpoint(
                self.run_dir / "checkpoints",
                it,
                self.model,
                self.optimizer,
                state,
                rng,
                scaler,
                self.config.keep_checkpoints,
            )
        if self.ddp.world > 1:
            dist.barrier()

    def fail(self, it: int, message: str) -> None:
        if self.ddp.is_main:
            last = ckpt_io.latest_checkpoint(self.run_dir / "checkpoints")
            atomic_write_json(
                self.run_dir / "summary.json",
                {"status": "failed", "error": message, "iter": it, "checkpoint": str(last) if last else None},
            )

    def run(self, start_iter: int, tokens: int, clean_tokens: int, resumed: Path | None) -> dict[str, Any]:
        cfg, ddp = self.config, self.ddp
        B, T = cfg.batch_size, self.block
        slots_per_iter = B * cfg.grad_accum
        tokens_per_iter = slots_per_iter * T
        accum_local = cfg.grad_accum // ddp.world
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
        log_loss, log_steps, log_tokens, log_time = 0.0, 0, 0, time.perf_counter()
        it = start_iter
        train_loss = float("nan")
        self.model.train()
        while it < cfg.max_iters:
            lr = learning_rate(it, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            plan = self.windows.plan(slots_per_iter)
            loss_sum = torch.zeros((), device=self.device)
            for m in range(accum_local):
                micro = m * ddp.world + ddp.rank  # global micro-step of this rank
                batch = self.windows.batch(plan[micro * B : (micro + 1) * B], self.device)
                sync = ddp.world == 1 or m == accum_local - 1  # DDP: all-reduce on the last micro-step only
                with contextlib.nullcontext() if sync else self.compiled.no_sync():
                    with self.autocast:
                        _, loss = self.compiled(batch.x, batch.y)
                    loss_sum += loss.detach().float()
                    self.scaler.scale(loss / accum_local).backward()
            if ddp.world > 1:
                dist.all_reduce(loss_sum)
            train_loss = loss_sum.item() / cfg.grad_accum
            if not math.isfinite(train_loss):
                self.optimizer.zero_grad(set_to_none=True)
                message = (
                    f"training loss became {train_loss} at iteration {it + 1}; stopped, the last good "
                    "checkpoint is kept; lower learning_rate, raise warmup_iters or use dtype = 'float32', "
                    "then --resume"
                )
                self.fail(it, message)
                bar.close()
                raise NoisyLMError(message)
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            it += 1
            tokens += tokens_per_iter
            clean_tokens += self.windows.clean_tokens(plan)
            log_loss, log_steps, log_tokens = (
                log_loss + train_loss,
                log_steps + 1,
                log_tokens + tokens_per_iter,
            )

            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                now = time.perf_counter()
                tokens_per_s = log_tokens / max(now - log_time, 1e-9)
                mfu = self.model.flops_per_token() * tokens_per_s / self.peak if self.peak else None
                if self.logger is not None:
                    self.logger.log(
                        {
                            "iter": it,
                            "tokens": tokens,
                            "clean_tokens": clean_tokens,
                            "lr": lr,
                            "train_loss": log_loss / log_steps,
                            "tokens_per_s": tokens_per_s,
                            "mfu": mfu,
                        }
                    )
                bar.set_postfix(
                    loss=f"{log_loss / log_steps:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False
                )
                log_loss, log_steps, log_tokens, log_time = 0.0, 0, 0, now
            bar.update(1)
            paused = time.perf_counter()
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                self.evaluate(it, tokens, clean_tokens)
            if (cfg.checkpoint_interval and it % cfg.checkpoint_interval == 0) or it == cfg.max_iters:
                self.save(it, tokens, clean_tokens)
            log_time += time.perf_counter() - paused  # eval and checkpoints do not count against tokens/s
        bar.close()
        last = ckpt_io.latest_checkpoint(self.run_dir / "checkpoints")
        summary = {
            "status": "finished",
            "iterations": it,
            "tokens": tokens,
            "clean_tokens": clean_tokens,
            "train_loss": train_loss if math.isfinite(train_loss) else None,
            "eval": self.last_eval,
            "checkpoint": str(last) if last else None,
            "wall_s": time.perf_counter() - started,
            "resumed_from": str(resumed) if resumed else None,
            "provenance": provenance(cfg.to_dict(), cfg.seed),
        }
        if ddp.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary
