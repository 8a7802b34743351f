"""Pre-training: `TrainConfig` and `train(config, run_dir)`; `evaluate_checkpoint` for on-demand losses.

Small components, each in its own module: `config` (the dataclass, TOML/YAML/JSON + overrides), `data`
(seeded, resumable training and eval windows), `checkpoint` (atomic, code-free checkpoints), `metrics`
(metrics.jsonl, TensorBoard, wandb), `trainer` (the loop, DDP) and `evaluate`.
"""

from noisylm.training.config import TrainConfig, load_config, parse_overrides
from noisylm.training.evaluate import evaluate_checkpoint
from noisylm.training.trainer import train

__all__ = ["TrainConfig", "evaluate_checkpoint", "load_config", "parse_overrides", "train"]
