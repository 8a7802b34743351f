"""Stage 2, pre-training: `TrainConfig` and `train(config, run_dir)`; evaluation, sampling and export
of what it wrote.

Small components, each in its own module: `config` (the dataclass, TOML/YAML/JSON + overrides), `data`
(seeded, resumable training and eval windows), `checkpoint` (atomic, code-free checkpoints), `metrics`
(metrics.jsonl, TensorBoard, wandb), `trainer` (the loop, DDP), `evaluate` (losses of a checkpoint),
`sampling` (`sample`: text from a checkpoint) and `export` (a Hugging Face GPT-2 folder).
"""

# Eager on purpose: with a lazy __getattr__, importing a submodule would set the package attribute of
# that name first. Modules are also named unlike the functions they export (`preparation` -> `prepare`).

from noisylm.training.config import TrainConfig, load_config, parse_overrides
from noisylm.training.evaluate import (
    EvalModel,
    evaluate_checkpoint,
    load_eval_model,
    stream_token_losses,
    token_losses,
)
from noisylm.training.export import export_hf
from noisylm.training.sampling import sample
from noisylm.training.trainer import train

__all__ = [
    "TrainConfig",
    "load_config",
    "parse_overrides",
    "train",
    "evaluate_checkpoint",
    "EvalModel",
    "load_eval_model",
    "token_losses",
    "stream_token_losses",
    "sample",
    "export_hf",
]
