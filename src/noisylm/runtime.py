"""Where and how computation runs: device, dtype, autocast, torch threads and the process group.

Shared by every stage (train, eval, sample, extract, probe, scan, theory), so that none of them imports
the GPT trainer just to pick a device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from noisylm.errors import NoisyLMError, UsageError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    owns_group: bool = False  # we initialised the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str, parallelism: str = "ddp") -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). One process with
    ``parallelism = "fsdp"`` gets a group of its own (world size 1), so that FSDP and its sharded
    checkpoints run the same code on one GPU as on eight."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and parallelism != "fsdp":
        return Distributed()
    owns = False
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and not device.startswith("cpu")
        backend = "nccl" if use_nccl else "gloo"
        if world == 1:  # no torchrun rendezvous to join: an in-memory store is enough for one process
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend=backend)
        owns = True
    return Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(), owns)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (None: unchanged) inside the block, and
    restored after it, so that one call's setting does not leak into the caller's process."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" → the local GPU if there is one, else the CPU; "cuda" → this process's GPU. Shared by
    train, sample, extract and probe; an unknown or unavailable device is one clear error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    except RuntimeError:
        raise UsageError(f"device {name!r} is not valid; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NoisyLMError(f"device {name!r} requested but CUDA is not available; use the CPU (device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise NoisyLMError(f"device {name!r} requested but MPS is not available; use the CPU (device cpu)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" → bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU (bf16 autocast
    is not faster than fp32 on CPUs without AMX, see BENCHMARKS.md)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AMX":
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise UsageError(f"dtype {name!r} is not valid; use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type == "cpu":
        raise UsageError("dtype float16 needs a GPU; on CPU use bfloat16 or float32")
    return _DTYPES[name]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
