"""`TrainConfig`: every knob of a training run, read from TOML/YAML/JSON plus ``--key value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    Data
        data: shard set directory to train on (`noisylm prepare` / `noisylm inject`). Required.
        eval_sets: extra named eval sets, ``{name: shard set directory}``; each is evaluated on its
            ``val`` split (e.g. a second domain, Fig. 4). ``val`` (the clean validation split) and
            ``noise`` (``noise.bin`` of a noisy training set) are always evaluated.
        sampler: "paired" (default): clean windows come from one seeded sequence over the clean tokens,
            identical for every run with the same ``data_seed``; a noisy set replaces windows by noise
            windows at rate α (its noise token share), drawn from a separate stream, so runs of a sweep
            differ only by the noise (common random numbers). "uniform": windows start anywhere in
            train.bin, uniformly (nanoGPT and the paper).
        data_seed: seed of the training windows; None = ``seed``.

    Model
        model: preset name (gpt2-124m, gpt2-350m, gpt2-774m, small, tiny).
        n_layer, n_head, n_embd, block_size, dropout, bias: override the preset's value when set.
        vocab_size: None = the shard set's vocabulary; when set it must equal it.

    Optimisation
        batch_size: windows per micro-batch (per process).
        grad_accum: micro-batches per iteration over all processes (divided by the world size under
            DDP), so one iteration is ``batch_size * grad_accum * block_size`` tokens regardless of it.
        max_iters: optimizer steps.
        learning_rate, min_lr: peak and final learning rate of the cosine schedule (paper 6e-4 → 6e-5).
        warmup_iters: linear warm-up steps from 0 to ``learning_rate``.
        lr_decay_iters: step at which the cosine reaches ``min_lr``; None = ``max_iters``.
        decay_lr: False keeps ``learning_rate`` constant after warm-up.
        weight_decay, beta1, beta2: AdamW (decay on matrices only), paper 0.1, 0.9, 0.95.
        grad_clip: clip the global gradient norm to this value; 0 disables clipping.

    Evaluation
        eval_interval: evaluate every this many iterations (and at the end).
        eval_iters: batches of ``batch_size`` windows per eval set; the windows are fixed (drawn from
            ``eval_seed``), identical across iterations and runs.
        eval_seed: seed of the eval windows.
        eval_at_start: also evaluate the initial model (iteration 0).

    System
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N", "mps".
        dtype: "auto" (bfloat16 autocast where supported, float16 + grad scaler on GPUs without bf16,
            else float32), "float32", "bfloat16", "float16".
        compile: torch.compile the model; "auto" (default) = on CUDA GPUs, off elsewhere.
        seed: seeds the initial weights and dropout (and the data when ``data_seed`` is None).
        threads: torch intra-op threads on CPU; None = PyTorch's default.
        ce_chunk_tokens: positions per chunk of the output layer + cross-entropy.

    Logging and checkpoints
        log_interval: write a train line to metrics.jsonl every this many iterations; its
            ``train_loss`` is the mean over the micro-batches since the previous line.
        checkpoint_interval: save a checkpoint every this many iterations (always at the end);
            0 = only at the end.
        keep_checkpoints: how many of the newest checkpoints to keep.
        tensorboard: write TensorBoard event files to ``tb/``.
        wandb_project, wandb_run_name: log to Weights & Biases too (needs ``pip install wandb``).
        progress: show a progress bar with loss, tokens/s and ETA.
    """

    # data
    data: str = ""
    eval_sets: dict[str, str] = field(default_factory=dict)
    sampler: str = "paired"
    data_seed: int | None = None
    # model
    model: str = "small"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    bias: bool | None = None
    vocab_size: int | None = None
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
    max_iters: int = 1000
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # evaluation
    eval_interval: int = 100
    eval_iters: int = 8
    eval_seed: int = 1234
    eval_at_start: bool = True
    # system
    device: str = "auto"
    dtype: str = "auto"
    compile: bool | str = "auto"
    seed: int = 1337
    threads: int | None = None
    ce_chunk_tokens: int = 512
    # logging and checkpoints
    log_interval: int = 1
    checkpoint_interval: int = 250
    keep_checkpoints: int = 2
    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_run_name: str | None = None
    progress: bool = True
    # parallelism: how several processes (torchrun) share the work. "ddp": every process holds the whole
    # model, gradients are all-reduced. "fsdp": weights, gradients and AdamW state are sharded over the
    # processes (FSDP2: one unit per transformer block, then the root) and checkpoints are sharded
    # (torch.distributed.checkpoint); use it when the model does not fit one GPU with DDP.
    parallelism: str = "ddp"
    # max_bad_steps: a step whose loss or gradients are not finite is skipped (it never reaches the
    # weights, the AdamW state or a checkpoint); this many consecutive skipped steps stop the run.
    max_bad_steps: int = 10

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), hints[f.name]))
        if not self.data:
            raise UsageError("config has no `data`; set data = the shard set directory to train on")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"sampler {self.sampler!r} is not valid; use one of: {', '.join(SAMPLERS)}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype {self.dtype!r} is not valid; use one of: {', '.join(DTYPES)}")
        from noisylm.model import PRESETS  # imports torch: only when a config is built

        if self.model not in PRESETS:
            raise UsageError(f"unknown model preset {self.model!r}; choose one of: {', '.join(PRESETS)}")
        positive = ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval")
        positive += ("keep_checkpoints", "ce_chunk_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_iters", "checkpoint_interval", "weight_decay", "grad_clip", "min_lr"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if not self.learning_rate > 0:
            raise UsageError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.min_lr > self.learning_rate:
            raise UsageError(f"min_lr {self.min_lr} is above learning_rate {self.learning_rate}; lower it")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < 1:
            raise UsageError(f"lr_decay_iters must be >= 1, got {self.lr_decay_iters}")
        for name in self.eval_sets:
            if name in RESERVED_EVAL_NAMES or not _EVAL_NAME.match(name):
                raise UsageError(
                    f"eval set name {name!r} is reserved or invalid; use letters, digits, '-', '_', '.' "
                    f"and not {'/'.join(RESERVED_EVAL_NAMES)}"
                )
        if self.compile not in (True, False, "auto"):
            raise UsageError(f"compile must be true, false or auto, got {self.compile!r}")
        if self.parallelism not in PARALLELISMS:
            raise UsageError(
                f"parallelism {self.parallelism!r} is not valid; use one of: {', '.join(PARALLELISMS)}"
            )
        if self.max_bad_steps < 1:
            raise UsageError(f"max_bad_steps must be >= 1, got {self.max_bad_steps}")
        self.model_config(vocab_size=self.vocab_size or 50257)  # validates the model fields

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


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (int, float, bool, str, X | None, dict[str, str])."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check_type(name, value, inner[0])
        for kind in inner:  # bool | str (compile = true | "auto"): the first type that fits
            try:
                return _check_type(name, value, kind)
            except UsageError:
                pass
        kinds = " or ".join(getattr(kind, "__name__", str(kind)) for kind in inner)
        raise UsageError(f"{name} must be {kinds}, got {value!r}")
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UsageError(f"{name} must be a table of name = path, got {value!r}")
        return {
            k: str(v) if isinstance(v, os.PathLike) else _check_type(f"{name}.{k}", v, str)
            for k, v in value.items()
        }
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e4 in YAML/TOML
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, os.PathLike):
            return str(value)
        if isinstance(value, str):
            return value
    kind = getattr(annotation, "__name__", str(annotation))
    raise UsageError(f"{name} must be {kind}, got {value!r}")


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
