"""Checkpoints that resume exactly and load without executing code.

A checkpoint is a directory ``checkpoints/ckpt-<iter:07d>/``::

    model.safetensors    the weights (the tied output embedding is stored once, as transformer.wte.weight)
    optimizer.pt         AdamW state (+ grad-scaler state), plain tensors: torch.load(weights_only=True)
    rng.pt               torch CPU/CUDA generator states of every rank, plain tensors
    trainer_state.json   iteration, tokens, data position, lr schedule, model and train config

It is built under a temporary name and renamed into place, so a killed run never leaves a half-written
checkpoint; only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from noisylm.artifacts import _remove, atomic_dir, atomic_write_json
from noisylm.errors import NoisyLMError
from noisylm.model import GPT, GPTConfig

CHECKPOINT_FORMAT = "noisylm-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{7})$")
TIED_KEY = "lm_head.weight"  # same tensor as transformer.wte.weight


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
    """Load ``model.safetensors`` into ``model`` (shapes must match exactly)."""
    try:
        weights = load_file(str(ckpt / "model.safetensors"))
    except (OSError, SafetensorError, ValueError) as exc:
        raise _corrupt(ckpt, exc) from None
    expected = model_state(model)
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected):
        raise NoisyLMError(
            f"checkpoint {ckpt} holds weights of a different model config; resume with the config it was "
            "trained with, or start a new run"
        )
    model.load_state_dict(weights, strict=False)  # lm_head.weight is tied to transformer.wte.weight


def load_training_state(ckpt: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(optimizer file contents, per-rank RNG states), loaded with ``weights_only=True``."""
    loaded = []
    for name in ("optimizer.pt", "rng.pt"):
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
