"""Where and how computation runs: device, dtype, autocast, torch threads and the process group.

Shared by every stage (train, eval, sample, extract, probe, scan, theory), so that none of them imports
the GPT trainer just to pick a device.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Iterable, Iterator
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


# glibc's mallopt parameters (malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_KEEP_FREED = {"depth": 0, "lock": threading.Lock()}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has mallopt and malloc_trim), else None; looked up once."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, libc's among them
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside the block, memory freed by tensors stays in the process and serves the next allocation,
    instead of going back to the operating system; after it, glibc's defaults return and the memory
    is released. Yields whether this applied (glibc only; elsewhere nothing changes).

    glibc serves each allocation above 32 MB with fresh pages from the kernel and unmaps them when
    freed, so every CPU training step of a 50k vocabulary page-faults in its logits chunk and its
    output and embedding gradients anew: ~50,000 faults (200 MB) a step in float32, ~115,000 in
    bfloat16 (its casts), which cost 3% and 24% of a step on the benchmark machine
    (benchmarks/bench_memory.py, BENCHMARKS.md). The price is a larger heap: glibc's aligned
    allocations leave holes in it until they fit, so the peak RSS grows by a bounded amount (+240 to
    +410 MB in that configuration). Numbers are unchanged: only where the bytes come from is."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _KEEP_FREED["lock"]:
        if _KEEP_FREED["depth"] == 0:
            libc.mallopt(_M_MMAP_MAX, 0)  # big blocks from the heap, which is kept...
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # ...and not trimmed after each free
        _KEEP_FREED["depth"] += 1
    try:
        yield True
    finally:
        with _KEEP_FREED["lock"]:
            _KEEP_FREED["depth"] -= 1
            if _KEEP_FREED["depth"] == 0:
                for param, value in _GLIBC_DEFAULTS.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)


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


# What `dtype = "auto"` needs from a CPU for bf16 autocast to be the faster choice: AMX's bf16 tile
# units, which oneDNN's bf16 matmuls use. Measured (BENCHMARKS.md "Training"): with AMX, bf16 trains
# at least as fast as fp32 at every size, 1.04x for the 0.1M-parameter `tiny` model, 1.4-1.7x for the demo's
# and the nanoGPT comparison's, 2.4x for GPT-2 124M; with AVX512-BF16 but no AMX (oneDNN kept to
# avx512_core_bf16 on the same CPU) it trains at 0.6-0.8x fp32, so fp32 stays the choice there and on
# every other CPU. (torch.backends.cpu.get_cpu_capability() says "AVX512" on AMX CPUs: no use here.)
AMX_BF16_FLAGS = frozenset({"amx_tile", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux names them (the ``flags`` line of ``/proc/cpuinfo``). Without
    that file (macOS, Windows), the two AMX flags when PyTorch's cpuinfo finds AMX tiles, else none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, hence the guard
    return AMX_BF16_FLAGS if amx is not None and amx() else frozenset()


def auto_cpu_dtype(flags: Iterable[str], onednn: bool = True) -> tuple[torch.dtype, str]:
    """The dtype `auto` trains in on a CPU with these feature flags, and why, in one line. A function
    of the flags alone (nothing is timed), so a config resolves the same way on every run on a machine.
    bfloat16 needs AMX (``amx_tile`` and ``amx_bf16``) and PyTorch built with oneDNN, which runs bf16
    matmuls on it; AVX512-BF16 alone makes bf16 slower than fp32 (see AMX_BF16_FLAGS)."""
    flags = frozenset(flags)
    if flags >= AMX_BF16_FLAGS and onednn:
        return (
            torch.bfloat16,
            "auto: bfloat16, the CPU has AMX (amx_tile, amx_bf16), bf16 trains faster there",
        )
    if flags >= AMX_BF16_FLAGS:
        return torch.float32, "auto: float32, the CPU has AMX but this PyTorch has no oneDNN to use it"
    if "avx512_bf16" in flags:
        return torch.float32, "auto: float32, the CPU has AVX512-BF16 but no AMX, bf16 trains slower there"
    return torch.float32, "auto: float32, the CPU has no AMX, bf16 trains slower there"


def choose_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """`resolve_dtype` with the reason for its answer, one line for a run's config.json."""
    if name == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16, "auto: bfloat16, the GPU supports it"
            return torch.float16, "auto: float16 with a grad scaler, the GPU has no bfloat16"
        if device.type == "cpu":
            return auto_cpu_dtype(cpu_flags(), torch.backends.mkldnn.is_available())
        return torch.float32, f"auto: float32 on {device.type}"
    if name not in _DTYPES:
        raise UsageError(f"dtype {name!r} is not valid; use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type == "cpu":
        raise UsageError("dtype float16 needs a GPU; on CPU use bfloat16 or float32")
    return _DTYPES[name], "set in the config"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" → bfloat16 on GPUs that support it, float16 on older GPUs; on CPUs bfloat16 with AMX,
    else float32 (`auto_cpu_dtype`). Other names as written; float16 only on GPUs."""
    return choose_dtype(name, device)[0]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
