"""Checkpoints that resume exactly and load without executing code.

A checkpoint is a directory ``checkpoints/ckpt-<iter:07d>/``::

    model.safetensors    the weights (the tied output embedding is stored once, as transformer.wte.weight)
    optimizer.pt         AdamW state (+ grad-scaler state), plain tensors: torch.load(weights_only=True)
    rng.pt               torch CPU/CUDA generator states of every rank, plain tensors
    trainer_state.json   iteration, tokens, data position, lr schedule, model and train config

A run with ``parallelism = "fsdp"`` writes a *sharded* checkpoint instead: ``dcp/`` (the weights and
the AdamW state, each process writing its own shards with ``torch.distributed.checkpoint``; keys
``model.<name>`` and ``optimizer.*``), ``scaler.pt`` (grad-scaler state), ``rng.pt`` and
``trainer_state.json``. `load_model` reads both kinds on one process, so eval, sample, export, extract
and theory take either.

It is built under a temporary name and renamed into place, so a killed run never leaves a half-written
checkpoint; only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from noisylm.artifacts import _remove, atomic_dir, atomic_write_json
from noisylm.errors import NoisyLMError
from noisylm.model import GPT, GPTConfig

CHECKPOINT_FORMAT = "noisylm-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{7})$")
TIED_KEY = "lm_head.weight"  # same tensor as transformer.wte.weight
SHARDED_DIR = "dcp"  # torch.distributed.checkpoint folder of a sharded checkpoint


def checkpoint_name(iteration: int) -> str:
    return f"ckpt-{iteration:07d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (a run's ``checkpoints/``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The weights as contiguous CPU tensors, the tied output embedding once."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != TIED_KEY}


def save_checkpoint(
    root: str | os.PathLike,
    iteration: int,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    scaler_state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/ckpt-<iteration>`` atomically and delete all but the newest ``keep``."""
    root = Path(root)
    path = root / checkpoint_name(iteration)
    state = {"format": CHECKPOINT_FORMAT, "iter": iteration, **trainer_state}
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": CHECKPOINT_FORMAT})
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler_state or {}}, tmp / "optimizer.pt")
        torch.save({"ranks": rng_states}, tmp / "rng.pt")
        atomic_write_json(tmp / "trainer_state.json", state)
    for old in list_checkpoints(root)[:-keep]:
        _remove(old)
    return path


def save_sharded_checkpoint(
    root: str | os.PathLike,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    scaler_state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """`save_checkpoint` for a sharded (FSDP) model; every process calls it. Each process writes its
    shards of the weights and AdamW state into ``dcp/`` of the temporary directory that process 0
    made (it must be on a file system they all see); process 0 writes the rest and renames it."""
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(root)
    path = root / checkpoint_name(iteration)
    is_main = dist.get_rank() == 0
    weights, optimizer_state = get_state_dict(model, optimizer)
    weights.pop(TIED_KEY, None)  # stored once, as transformer.wte.weight
    state = {"format": CHECKPOINT_FORMAT, "iter": iteration, "sharded": True, **trainer_state}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(path, overwrite=True)) if is_main else None
        shared = [str(tmp) if tmp is not None else None]
        dist.broadcast_object_list(shared, src=0)
        tmp = Path(shared[0])
        # Returns once every process's shards and the metadata are written, so the rename is safe.
        dcp_save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=tmp / SHARDED_DIR)
        if is_main:
            torch.save({"scaler": scaler_state or {}}, tmp / "scaler.pt")
            torch.save({"ranks": rng_states}, tmp / "rng.pt")
            atomic_write_json(tmp / "trainer_state.json", state)
    if is_main:
        for old in list_checkpoints(root)[:-keep]:
            _remove(old)
    dist.barrier()
    return path


def is_sharded(ckpt: Path) -> bool:
    """Whether ``ckpt`` is a sharded (FSDP, torch.distributed.checkpoint) checkpoint."""
    return (ckpt / SHARDED_DIR / ".metadata").is_file()


def weight_files(ckpt: Path) -> list[Path]:
    """The files that hold a checkpoint's weights (to hash it)."""
    if is_sharded(ckpt):
        return sorted(p for p in (ckpt / SHARDED_DIR).iterdir() if p.is_file())
    return [ckpt / "model.safetensors"]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint, a run directory (its newest checkpoint) or a
    ``checkpoints/`` directory."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    if not path.exists():
        raise NoisyLMError(f"checkpoint {path} not found; pass a run directory or one of its checkpoints")
    raise NoisyLMError(
        f"{path} holds no checkpoint; pass a run directory with checkpoints/ or a ckpt-* folder"
    )


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(ckpt, exc) from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise NoisyLMError(f"{ckpt} is not a noisylm checkpoint (format {state.get('format')!r})")
    return state


def _corrupt(ckpt: Path, exc: BaseException) -> NoisyLMError:
    failures = getattr(exc, "failures", None)  # torch.distributed.checkpoint: the error of each rank
    if failures:
        exc = next(iter(failures.values()))  # (exception, its stack)
        exc = exc[0] if isinstance(exc, tuple) else exc
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return NoisyLMError(
        f"checkpoint {ckpt} is corrupt or incomplete ({detail}); delete it to fall back to an older "
        "checkpoint, or start the run again"
    )


def load_model(
    ckpt: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[GPT, dict[str, Any], Path]:
    """The model of a checkpoint (or of a run directory's newest one), its trainer state, and its path."""
    path = resolve_checkpoint(ckpt)
    state = read_trainer_state(path)
    try:
        config = GPTConfig(**state["model"])
    except (KeyError, TypeError) as exc:
        raise _corrupt(path, exc) from None
    model = GPT(config)
    load_weights(model, path)
    return model.to(device), state, path


def load_weights(model: GPT, ckpt: Path) -> None:
    """Load the weights of ``ckpt`` (``model.safetensors``, or the ``dcp/`` shards of a sharded
    checkpoint, gathered on this process alone) into ``model``; shapes must match exactly."""
    expected = model_state(model)
    if is_sharded(ckpt):
        weights = _read_sharded_weights(ckpt, expected)
    else:
        try:
            weights = load_file(str(ckpt / "model.safetensors"))
        except (OSError, SafetensorError, ValueError) as exc:
            raise _corrupt(ckpt, exc) from None
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected):
        raise _other_model(ckpt)
    model.load_state_dict(weights, strict=False)  # lm_head.weight is tied to transformer.wte.weight


def _other_model(ckpt: Path) -> NoisyLMError:
    return NoisyLMError(
        f"checkpoint {ckpt} holds weights of a different model config; resume with the config it was "
        "trained with, or start a new run"
    )


def _read_sharded_weights(ckpt: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full weights of a sharded checkpoint, read on this process without a process group."""
    from torch.distributed.checkpoint import CheckpointException, FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    reader = FileSystemReader(str(ckpt / SHARDED_DIR))
    try:
        stored = reader.read_metadata().state_dict_metadata
    except Exception as exc:  # a truncated or foreign .metadata
        raise _corrupt(ckpt, exc) from None
    shapes = {
        k.removeprefix("model."): tuple(getattr(v, "size", ()))
        for k, v in stored.items()
        if k.startswith("model.")
    }
    if set(shapes) != set(expected) or any(shapes[k] != tuple(expected[k].shape) for k in expected):
        raise _other_model(ckpt)
    weights = {k: torch.empty_like(v) for k, v in expected.items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp_load({"model": weights}, storage_reader=reader, no_dist=True)
    except (Exception, CheckpointException) as exc:  # missing or truncated shards
        raise _corrupt(ckpt, exc) from None
    return weights


def load_sharded_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the weights and AdamW state of a sharded checkpoint into ``model`` and ``optimizer``
    (sharded or not, any number of processes: each reads the pieces it holds). Collective when a
    process group is up."""
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer)
    weights.pop(TIED_KEY, None)
    state = {"model": weights, "optimizer": optimizer_state}
    try:
        with warnings.catch_warnings():  # one process without a group: "load in a single process", yes
            warnings.simplefilter("ignore", UserWarning)
            dcp_load(state, checkpoint_id=ckpt / SHARDED_DIR, no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as exc:
        raise _corrupt(ckpt, exc) from None
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(strict=False),  # without lm_head.weight: tied to transformer.wte.weight
    )


def load_training_state(ckpt: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(optimizer file contents, per-rank RNG states), loaded with ``weights_only=True``. For a sharded
    checkpoint the first holds only the grad-scaler state (the AdamW state is in ``dcp/``)."""
    loaded = []
    for name in ("scaler.pt" if is_sharded(ckpt) else "optimizer.pt", "rng.pt"):
        try:
            loaded.append(torch.load(ckpt / name, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError:  # weights_only met something other than tensors and containers
            raise NoisyLMError(
                f"{ckpt / name} holds Python objects, not only tensors; noisylm does not load code from "
                "checkpoints, delete it or start the run again"
            ) from None
        except Exception as exc:  # torch raises several types for truncated/garbled files
            raise _corrupt(ckpt, exc) from None
    return loaded[0], loaded[1].get("ranks", [])


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint_tokenizer(state: dict[str, Any], ckpt: Path, vocab_size: int | None = None) -> Any:
    """The tokenizer a checkpoint was trained with: ``gpt2``/``bytes`` by name, a trained ``bpe:N`` from
    the ``tokenizer.json`` the trainer copied into the run directory (``RUN/checkpoints/ckpt-N``)."""
    from noisylm.data.tokenizers import BPE_FILE, load_tokenizer

    name = (state.get("data") or {}).get("tokenizer")
    if name is None:  # checkpoints from before the data record named it
        name = "bytes" if vocab_size is not None and vocab_size <= 257 else "gpt2"
    ckpt = Path(ckpt)
    places = (ckpt, ckpt.parent, ckpt.parent.parent)  # ckpt-N/, checkpoints/, the run directory
    directory = next((d for d in places if (d / BPE_FILE).is_file()), places[-1])
    return load_tokenizer(name, directory)
