"""Pre-training: `TrainConfig` and `train(config, run_dir)`; `evaluate_checkpoint` for on-demand losses.

Small components, each in its own module: `config` (the dataclass, TOML/YAML/JSON + overrides), `data`
(seeded, resumable training and eval windows), `checkpoint` (atomic, code-free checkpoints), `metrics`
(metrics.jsonl, TensorBoard, wandb), `trainer` (the loop, DDP) and `evaluate`.

Names are imported lazily, so that `noisylm --help` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "noisylm.training.config",
    "load_config": "noisylm.training.config",
    "parse_overrides": "noisylm.training.config",
    "train": "noisylm.training.trainer",
    "evaluate_checkpoint": "noisylm.training.evaluate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'noisylm.training' has no attribute {name!r}")
