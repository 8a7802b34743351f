"""`TrainConfig`: every knob of a training run, read from TOML/YAML/JSON plus ``--key value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisylm.configs.fields import Check, above, at_least, between, one_of, setting, validate
from noisylm.errors import UsageError

if TYPE_CHECKING:
    from noisylm.model import GPTConfig

SAMPLERS = ("paired", "uniform")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PARALLELISMS = ("ddp", "fsdp")
RESERVED_EVAL_NAMES = ("val", "noise", "train")
_EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TrainConfig:
    """A training run. Defaults follow the paper's recipe (App. D.2) at CPU scale.

    Every field documents itself (`noisylm.configs.fields.setting`): `noisylm train --help` and the
    README's `train` table show the docs. ``sampler = "paired"`` means: clean windows come from one
    seeded sequence over the clean tokens, identical for every run with the same ``data_seed``; a noisy
    set replaces windows by noise windows at rate α (its noise token share), drawn from a separate
    stream, so runs of a sweep differ only by the noise (common random numbers).
    """

    # data
    data: str = setting(
        "", "shard set directory to train on (`noisylm prepare` / `noisylm inject`); required"
    )
    eval_sets: dict[str, str] = setting(
        doc="extra eval sets `{name: shard set directory}`, each evaluated on its `val` split (e.g. a second "
        "domain, Fig. 4); `val` (clean validation) and `noise` (a noisy set's `noise.bin`) always are",
        default_factory=dict,
    )
    sampler: str = setting(
        "paired",
        "`paired`: the same clean windows in the same order in every run with this `data_seed`, noise "
        "windows at rate α in between (common random numbers); `uniform`: anywhere in train.bin (nanoGPT)",
        one_of(SAMPLERS),
    )
    data_seed: int | None = setting(None, "seed of the training windows; none = `seed`")
    # model
    model: str = setting("small", "model preset: gpt2-124m, gpt2-350m, gpt2-774m, small or tiny")
    n_layer: int | None = setting(None, "transformer blocks; none = the preset's")
    n_head: int | None = setting(None, "attention heads (must divide `n_embd`); none = the preset's")
    n_embd: int | None = setting(None, "embedding width; none = the preset's")
    block_size: int | None = setting(None, "context length in tokens; none = the preset's")
    dropout: float | None = setting(None, "dropout probability, in [0, 1); none = the preset's")
    bias: bool | None = setting(None, "biases in the linear layers and LayerNorms; none = the preset's")
    vocab_size: int | None = setting(None, "none = the shard set's vocabulary; when set it must equal it")
    # optimisation
    batch_size: int = setting(16, "windows per micro-batch (per process)", at_least(1))
    grad_accum: int = setting(
        1,
        "micro-batches per iteration over all processes (divided by the world size under DDP): one "
        "iteration is `batch_size·grad_accum·block_size` tokens, whatever the number of processes",
        at_least(1),
    )
    max_iters: int = setting(1000, "optimizer steps", at_least(1))
    learning_rate: float = setting(
        6e-4, "peak learning rate: linear warm-up to it, then cosine decay to `min_lr` (App. D.2)", above(0)
    )
    min_lr: float = setting(
        6e-5, "final learning rate of the cosine schedule; at most `learning_rate`", at_least(0)
    )
    warmup_iters: int = setting(100, "linear warm-up steps from 0 to `learning_rate`", at_least(0))
    lr_decay_iters: int | None = setting(
        None, "step at which the cosine reaches `min_lr`; none = `max_iters`", at_least(1)
    )
    decay_lr: bool = setting(True, "false keeps `learning_rate` constant after warm-up")
    weight_decay: float = setting(0.1, "AdamW weight decay, on weight matrices only (paper 0.1)", at_least(0))
    beta1: float = setting(0.9, "AdamW β1 (paper 0.9)", between(0, 1))
    beta2: float = setting(0.95, "AdamW β2 (paper 0.95)", between(0, 1))
    grad_clip: float = setting(
        1.0, "clip the global gradient norm to this value; 0 disables clipping", at_least(0)
    )
    # evaluation
    eval_interval: int = setting(100, "evaluate every this many iterations (and at the end)", at_least(1))
    eval_iters: int = setting(
        8,
        "batches of `batch_size` windows per eval set, drawn once from `eval_seed`: the same windows at "
        "every evaluation and in every run",
        at_least(1),
    )
    eval_seed: int = setting(1234, "seed of the eval windows")
    eval_at_start: bool = setting(True, "also evaluate the initial model (iteration 0)")
    # system
    device: str = setting("auto", "`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:N` or `mps`")
    dtype: str = setting(
        "auto",
        "`auto` = bfloat16 autocast on GPUs that support it and on CPUs with AMX, float16 with a grad "
        "scaler on older GPUs, else float32; or `float32`, `bfloat16` (autocast), `float16` (GPU)",
        one_of(DTYPES),
    )
    compile: bool | str = setting(
        "auto",
        "torch.compile the model: `true`, `false` or `auto` (on CUDA GPUs; off elsewhere, where it is not "
        "faster and runs keep their eager numbers)",
        Check("true, false or auto", lambda value: value in (True, False, "auto"), ("true", "false", "auto")),
    )
    seed: int = setting(1337, "seeds the initial weights and dropout (and the data when `data_seed` is none)")
    threads: int | None = setting(
        None, "torch intra-op threads on CPU; none = PyTorch's default", at_least(1)
    )
    ce_chunk_tokens: int = setting(
        512, "positions per chunk of the output layer + cross-entropy (bounds its memory)", at_least(1)
    )
    # logging and checkpoints
    log_interval: int = setting(
        1,
        "write a train line to metrics.jsonl every this many iterations (its `train_loss` is the mean "
        "over the steps taken since the previous line); between lines the host never waits for the GPU",
        at_least(1),
    )
    checkpoint_interval: int = setting(
        250, "save a checkpoint every this many iterations, and at the end; 0 = only at the end", at_least(0)
    )
    keep_checkpoints: int = setting(2, "how many of the newest checkpoints to keep", at_least(1))
    tensorboard: bool = setting(True, "write TensorBoard event files to `tb/`")
    wandb_project: str | None = setting(
        None, "also log to this Weights & Biases project (needs `pip install wandb`); none = off"
    )
    wandb_run_name: str | None = setting(None, "Weights & Biases run name; none = wandb's own")
    progress: bool = setting(True, "show a progress bar with loss, tokens/s and ETA")
    parallelism: str = setting(
        "ddp",
        "with several processes (torchrun): `ddp` copies the model to each; `fsdp` shards weights, gradients "
        "and AdamW state (FSDP2, a unit per block) and writes sharded checkpoints",
        one_of(PARALLELISMS),
    )
    max_bad_steps: int = setting(
        10,
        "a step with a non-finite loss or gradient is skipped (it never reaches the weights); this many "
        "in a row stop the run",
        at_least(1),
    )

    def __post_init__(self) -> None:
        validate(self)  # types and each field's check
        if not self.data:
            raise UsageError("config has no `data`; set data = the shard set directory to train on")
        if self.min_lr > self.learning_rate:
            raise UsageError(f"min_lr {self.min_lr} is above learning_rate {self.learning_rate}; lower it")
        for name in self.eval_sets:
            if name in RESERVED_EVAL_NAMES or not _EVAL_NAME.match(name):
                raise UsageError(
                    f"eval set name {name!r} is reserved or invalid; use letters, digits, '-', '_', '.' "
                    f"and not {'/'.join(RESERVED_EVAL_NAMES)}"
                )
        self.model_config(vocab_size=self.vocab_size or 50257)  # the model fields, the preset name included

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The preset with this config's overrides, for a vocabulary of ``vocab_size`` tokens."""
        from noisylm.model import preset

        overrides = {
            k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")
        }
        return preset(self.model, vocab_size=vocab_size, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error that lists the valid ones."""
        if not isinstance(values, dict):
            raise UsageError(f"a train config must be a table of keys, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UsageError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------------------
# Reading configs


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The key/value table of a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} not found; check the path")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise UsageError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except UsageError:
        raise
    except Exception as exc:  # each parser has its own error class
        raise UsageError(f"cannot parse config file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a table of keys, got {type(values).__name__}")
    return values


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--max_iters", "100", "--eval_sets.docs=data/docs", "--compile"]`` → a dict of typed values.

    Keys may use ``-`` or ``_``; ``eval_sets.NAME`` sets one eval set; a flag without a value means
    true. Values are parsed as the field's type (``none`` means None).
    """
    hints = typing.get_type_hints(TrainConfig)
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise UsageError(f"unexpected argument {token!r}; overrides look like --key value")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        i += 1
        base, dot, sub = key.partition(".")
        if base not in valid or (dot and base != "eval_sets"):
            raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        if dot:
            out.setdefault("eval_sets", {})[sub] = value
            continue
        out[key] = _parse_value(key, value, hints[key])
    return out


def _parse_value(key: str, text: str, annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        (annotation,) = [a for a in args if a is not type(None)]
    elif args and bool in args:  # bool | str: a truth word, else the text (compile = auto)
        try:
            return _parse_value(key, text, bool)
        except UsageError:
            return text
    if annotation is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"--{key} must be true or false, got {text!r}")
    if typing.get_origin(annotation) is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f'--{key} must be a JSON table, e.g. \'{{"docs": "data/docs"}}\'') from None
        return value
    try:
        if annotation is int:
            number = float(text)  # accepts 1e4
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        return annotation(text)
    except ValueError:
        raise UsageError(f"--{key} must be {annotation.__name__}, got {text!r}") from None


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The config of ``path`` (TOML/YAML/JSON; a `[train]` table is used when present) with overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_config_file(path)
        if "train" in values and isinstance(values["train"], dict) and "data" not in values:
            values = values["train"]
    values = dict(values)
    for key, value in (overrides or {}).items():
        if key == "eval_sets" and isinstance(values.get("eval_sets"), dict):
            values["eval_sets"] = {**values["eval_sets"], **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values)
