"""`TrainConfig`: every knob of a training run, read from TOML/YAML/JSON plus ``--key value`` overrides."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from noisylm.artifacts import read_config_file
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
        "`auto` = bfloat16 autocast on GPUs that support it and on CPUs with AMX (flags `amx_tile`, "
        "`amx_bf16`; without AMX bf16 trains slower than fp32), float16 with a grad scaler on older GPUs, "
        "else float32; config.json records the choice and why (`dtype_reason`), a resumed run keeps it; "
        "or `float32`, `bfloat16` (autocast), `float16` (GPU)",
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


def field_types(cls: type) -> dict[str, Any]:
    """The type of every field of the dataclass ``cls`` (the ``fields`` of `parse_overrides`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(
    args: Sequence[str], fields: Mapping[str, Any] | None = None, what: str = "config"
) -> dict[str, Any]:
    """Overrides in either spelling, as a nested dict of typed values.

    ``--key value``, ``--key=value`` and ``--flag`` (true), as `noisylm train` takes them, or
    ``key=value``, as `noisylm sweep --set` takes them, mixed freely. ``-`` and ``_`` are the same in
    field names; dotted keys reach into tables (``eval_sets.docs=DIR``, ``train.max_iters=100``).
    ``fields`` maps each key to its type, or to a mapping of the same kind for a table of known keys
    (default: TrainConfig's fields); ``what`` names the config in errors. A value is parsed as its
    field's type: ``1e4`` is a valid int; true/false, yes/no, on/off, 1/0 are booleans; ``none`` or
    ``null`` sets an optional field to None; a table is JSON or a TOML inline table; a string is taken
    as given (a quoted TOML string is unquoted); anything else (a list) is read as a TOML value, or
    taken as a string when it is not one.

    >>> parse_overrides(["--max-iters", "7", "eval_sets.docs=data/docs"])
    {'max_iters': 7, 'eval_sets': {'docs': 'data/docs'}}
    """
    fields = field_types(TrainConfig) if fields is None else fields
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        item = args[i]
        i += 1
        dashed = item.startswith("--")
        key, eq, text = (item[2:] if dashed else item).partition("=")
        if not key:
            raise UsageError(f"override {item!r} has no key; e.g. max_iters=100 or --max-iters 100")
        if not eq and not dashed:
            raise UsageError(
                f"override {item!r} is not key=value or --key value; e.g. max_iters=100 or --max-iters 100"
            )
        path, annotation = _resolve_key(key, fields, what)
        if not eq:  # `--key value`, or a bare `--flag` meaning true (then the next item is not its value)
            following = args[i] if i < len(args) and not args[i].startswith("--") else None
            kind, optional = _without_none(annotation)
            if kind is bool or bool in typing.get_args(kind):  # bool | str (compile = auto) too
                words = {*_BOOLEANS, "none", "null"} if optional else set(_BOOLEANS)
                # a bool | str field also takes any word that is not another override (--compile auto)
                takes_word = kind is not bool and "=" not in (following or "=")
                if (following or "").lower() not in words and not takes_word:
                    following = None
            elif following is None:
                raise UsageError(f"{item} needs a value; e.g. {item} VALUE or {key}=VALUE")
            text = "true" if following is None else following
            i += following is not None
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        _merge_into(target, path[-1], _parse_value(".".join(path), text, annotation))
    return out


def merge_overrides(values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` (from `parse_overrides`) applied: tables are merged key by key,
    so ``eval_sets.docs=DIR`` adds an eval set; anything else is replaced."""
    merged = copy.deepcopy(dict(values))
    for key, value in overrides.items():
        _merge_into(merged, key, copy.deepcopy(value))
    return merged


def _merge_into(target: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and isinstance(target.get(key), dict):
        for sub, item in value.items():
            _merge_into(target[key], sub, item)
    else:
        target[key] = value


def _resolve_key(key: str, fields: Mapping[str, Any], what: str) -> tuple[list[str], Any]:
    """The key's path (field names with ``_``, table keys as given) and the type of its value."""
    path: list[str] = []
    node: Any = fields
    for part in key.split("."):
        if not part:
            raise UsageError(f"override key {key!r} has an empty part; e.g. eval_sets.docs=DIR")
        if isinstance(node, Mapping):  # a table of known fields
            name = part.replace("-", "_")
            if name not in node:
                table = f" of {'.'.join(path)}" if path else ""
                raise UsageError(
                    f"unknown {what} key {'.'.join([*path, name])!r}; valid keys{table}: {', '.join(node)}"
                )
            path.append(name)
            node = node[name]
        elif _table_value_type(node) is not None:  # dict[str, X]: any key, values of type X
            path.append(part)
            node = _table_value_type(node)
        else:
            raise UsageError(f"override {key!r}: {'.'.join(path)} is not a table; set it as a whole")
    return path, node


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``| None``, whether None is allowed)."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], type(None) in args
    return annotation, False


def _table_value_type(annotation: Any) -> Any:
    """X for ``dict[str, X]`` (also when optional), None for anything that is not a table."""
    annotation, _ = _without_none(annotation)
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        return args[1] if len(args) == 2 else Any
    return None


_BOOLEANS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _toml_value(text: str) -> Any:
    """``text`` as a TOML value (``[0.01, 0.05]``, ``{sd = 2}``, ``"x"``); raises ValueError if not one."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(text) from exc


def _parse_value(key: str, text: str, annotation: Any) -> Any:
    annotation, optional = _without_none(annotation)
    if optional and text.lower() in ("none", "null"):
        return None
    if annotation is bool:
        if text.lower() in _BOOLEANS:
            return _BOOLEANS[text.lower()]
        raise UsageError(f"{key} must be true or false, got {text!r}")
    if bool in typing.get_args(annotation) and text.lower() in _BOOLEANS:  # bool | str: compile = on
        return _BOOLEANS[text.lower()]
    if _table_value_type(annotation) is not None:
        for parse in (json.loads, _toml_value):
            try:
                value = parse(text)
            except ValueError:  # json.JSONDecodeError is a ValueError
                continue
            if isinstance(value, dict):
                return value
        raise UsageError(f'{key} must be a table, e.g. \'{{"docs": "data/docs"}}\' or {key}.docs=data/docs')
    if annotation is str:
        if text[:1] in ("'", '"'):  # a TOML string, as `--set name="mine"` writes it
            try:
                value = _toml_value(text)
            except ValueError:
                return text
            return value if isinstance(value, str) else text
        return text
    if annotation in (int, float):
        try:
            number = float(text)  # accepts 1e4 for an int
            if annotation is int and not number.is_integer():
                raise ValueError(text)
            return int(number) if annotation is int else number
        except ValueError:
            raise UsageError(f"{key} must be {annotation.__name__}, got {text!r}") from None
    try:  # lists and untyped values: TOML when it is valid TOML, else the text itself
        return _toml_value(text)
    except ValueError:
        return text


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The config of ``path`` (TOML/YAML/JSON; a `[train]` table is used when present) with overrides
    (a nested dict, as `parse_overrides` returns it)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_config_file(path)
        if "train" in values and isinstance(values["train"], dict) and "data" not in values:
            values = values["train"]
    return TrainConfig.from_dict(merge_overrides(values, overrides or {}))
