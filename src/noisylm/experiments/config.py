"""What a sweep is: `SweepConfig` (one clean corpus, a grid of noise kinds × α, one training recipe),
`NoiseSpec`, the presets shipped in ``noisylm/configs/`` and `load_sweep_config` (preset or
TOML/YAML/JSON file, plus overrides)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from noisylm.artifacts import read_config_file
from noisylm.configs.fields import Check, at_least, one_of, rule, setting, validate
from noisylm.errors import UsageError
from noisylm.experiments.plan import PlannedRun, run_name

# Sweep presets (noisylm/configs/<name>.toml); not the GPT presets of `noisylm.model.PRESETS`.
SWEEP_PRESETS = ("demo", "demo-bytes", "paper-124m", "paper-774m")
NOISE_KINDS = ("uniform", "boosted", "gaussian", "mojibake", "histogram", "corpus")
RESERVED_EVAL_NAMES = ("val", "noise", "train")
LAUNCHERS = ("inprocess", "torchrun")


@dataclass
class NoiseSpec:
    """One noise kind and the proportions α at which it is injected (one run per α)."""

    kind: str
    alphas: list[float]
    params: dict[str, Any] = field(default_factory=dict)  # passed to `inject` (e.g. sd for gaussian)

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise UsageError(f"unknown noise kind {self.kind!r}; choose one of: {', '.join(NOISE_KINDS)}")
        if isinstance(self.alphas, (int, float)):
            self.alphas = [self.alphas]
        self.alphas = [float(a) for a in self.alphas]
        if not self.alphas:
            raise UsageError(f"noise kind {self.kind!r} has no alphas; give e.g. alphas = [0.05]")
        for alpha in self.alphas:
            if not 0.0 < alpha < 1.0:
                raise UsageError(f"noise alpha {alpha} for {self.kind!r} is outside (0, 1); use e.g. 0.05")
        if len(set(self.alphas)) != len(self.alphas):
            raise UsageError(f"noise kind {self.kind!r} lists an alpha twice: {self.alphas}")


_POSITIVE = "downstream epochs, batch_size and lr must be positive"


@dataclass
class DownstreamConfig:
    """The downstream stage (the paper's Table 1 at sweep scale): after training, features of every
    run's final checkpoint on a labelled task, probed with CE and CE + L_gm at a fixed recipe (no grid
    search). Every field documents itself (`noisylm.configs.fields.setting`; the README's sweep table)."""

    dataset: str = setting(
        "shakespeare-plays",
        "a bundled dataset name or a path (`noisylm extract`'s); the default: which of the bundled "
        "Shakespeare texts a passage comes from",
    )
    runs: list[str] = setting(doc="the runs to probe; empty = every run", default_factory=list)
    heads: list[str] = setting(
        doc="head kinds, as for `noisylm probe`", default_factory=lambda: ["linear", "mlp"]
    )
    losses: list[str] = setting(
        doc="losses, as for `noisylm probe`; must include `ce`",
        default_factory=lambda: ["ce", "lgm"],
        check=rule(
            lambda losses: (
                None
                if "ce" in losses
                else "downstream losses must include 'ce' (Table 1 compares CE with CE + L_gm)"
            )
        ),
    )
    seeds: int = setting(
        3,
        "probe seeds per head and loss (mean ± std, and the pairs of the paired differences)",
        Check(
            ">= 2",
            lambda value: value >= 2,
            message=lambda value: f"downstream seeds must be >= 2 (mean ± std over them), got {value}",
        ),
    )
    epochs: int = setting(
        10, "epochs of every probe", Check(">= 1", lambda v: v >= 1, message=lambda v: _POSITIVE)
    )
    lr: float = setting(
        1e-3, "learning rate of every probe", Check("> 0", lambda v: v > 0, message=lambda v: _POSITIVE)
    )
    batch_size: int = setting(
        32, "batch size of every probe", Check(">= 1", lambda v: v >= 1, message=lambda v: _POSITIVE)
    )
    gamma: float = setting(0.01, "γ of L_gm (Eq. 3)")
    lam: float = setting(0.15, "λ of L_gm (Eq. 6)")
    pooling: str = setting(
        "mean",
        "feature extraction: `mean` or `last` hidden state",
        one_of(
            ("mean", "last"), lambda value: f"downstream pooling {value!r} is not valid; use 'mean' or 'last'"
        ),
    )
    max_length: int = setting(128, "feature extraction: tokens per passage")
    extract_batch_size: int = setting(64, "feature extraction: passages per forward pass")
    max_train: int | None = setting(None, "stratified cap of the dataset's train split; none = all")
    max_test: int | None = setting(None, "stratified cap of the dataset's test split; none = all")
    split_seed: int = setting(0, "seed of the dataset's splits")
    device: str = setting("cpu", "where extraction and probing run")

    def __post_init__(self) -> None:
        validate(self)  # types (lists stay lists) and each field's check


@dataclass
class SweepConfig:
    """A sweep: one clean corpus, a grid of noisy variants, one shared training recipe. Every field
    documents itself (`noisylm.configs.fields.setting`; the README's sweep table)."""

    name: str = setting(
        "sweep",
        "the sweep's name, without '/'",
        rule(
            lambda name: (
                None
                if name and "/" not in name
                else f"sweep name {name!r} must be a non-empty name without '/'"
            )
        ),
    )
    data: str | None = setting(
        None,
        "the clean training corpus: a bundled corpus (`shakespeare`, `python-docs`), prepared into "
        "data/clean with `tokenizer`, or a shard set made with `noisylm prepare`",
    )
    tokenizer: str = setting(
        "gpt2", "tokenizer for bundled corpora (`bytes`, `gpt2`); a shard set keeps its own"
    )
    domains: dict[str, str] = setting(
        doc="extra eval domains (Fig. 4): `{name: bundled corpus or shard set}`", default_factory=dict
    )
    clean: bool = setting(True, "include the α = 0 baseline (the report compares every run against it)")
    noise: list[NoiseSpec] = setting(
        doc="`[[noise]]` entries `{kind, alphas, params}`: one run per α; kinds of `noisylm inject`",
        default_factory=list,
    )
    placement: str = setting(
        "append",
        "`append` the noise after the clean data (as the paper does) or `interleave` it",
        one_of(
            ("append", "interleave"),
            lambda value: f"placement {value!r} is not valid; use 'append' or 'interleave'",
        ),
    )
    noise_seed: int = setting(0, "seed of the noise generator, the same for every noisy variant")
    seed: int = setting(1337, "training seed, the same for every run (paired sampling)")
    train: dict[str, Any] = setting(
        doc="`[train]`: TrainConfig fields shared by every run", default_factory=dict
    )
    launcher: str = setting(
        "inprocess",
        "`inprocess`, or `torchrun` (each run as `torchrun ... noisylm train`)",
        one_of(
            LAUNCHERS, lambda value: f"launcher {value!r} is not valid; use one of: {', '.join(LAUNCHERS)}"
        ),
    )
    nproc_per_node: int = setting(1, "processes per run under torchrun (GPUs per node)", at_least(1))
    parallel: int = setting(
        1,
        "runs trained at once, each in a single-threaded worker process kept for the sweep (`inprocess` "
        "only): on a small CPU two single-threaded runs use two cores better than one two-threaded run",
        at_least(1),
    )
    replicates: int = setting(
        1,
        "each run repeated this many times: replicate r trains with seed + r and data_seed + r, named "
        "`clean-r1`, `uniform-a0.05-r1` (r = 0: the plain name); paired differences get 95% intervals",
        at_least(1),
    )
    downstream: DownstreamConfig | None = setting(
        None, "`[downstream]`: the Table 1 stage, run after training; none = no downstream stage"
    )

    def __post_init__(self) -> None:
        self.noise = [n if isinstance(n, NoiseSpec) else _make(NoiseSpec, n, "noise") for n in self.noise]
        if self.downstream is not None and not isinstance(self.downstream, DownstreamConfig):
            self.downstream = _make(DownstreamConfig, self.downstream, "[downstream]")
        if not isinstance(self.train, dict):
            raise UsageError("[train] must be a table of TrainConfig fields")
        validate(self)  # types and each field's check
        if self.parallel > 1 and self.launcher != "inprocess":
            raise UsageError(
                "parallel > 1 needs launcher = 'inprocess'; a scheduler parallelises torchrun jobs"
            )
        if not self.clean and not self.noise:
            raise UsageError("the sweep has no runs; set clean = true or add a [[noise]] entry")
        for name in self.domains:
            if name in RESERVED_EVAL_NAMES or not name or "/" in name:
                raise UsageError(
                    f"domain name {name!r} is reserved or invalid; pick another (not val/noise/train)"
                )
        names = [r.name for r in self.grid()]
        clash = set(names) & set(self.domains)
        if clash:
            raise UsageError(f"domain name(s) {sorted(clash)} clash with run names; rename the domain")
        if self.downstream is not None:
            unknown = sorted(set(self.downstream.runs) - set(names))
            if unknown:
                raise UsageError(
                    f"[downstream] runs {unknown} are not in the grid; choose from: {', '.join(names)}"
                )

    def grid(self) -> list[PlannedRun]:
        """The runs of the sweep, replicate by replicate (so that the first complete set finishes
        first), each clean first, then each noise kind in the order given, each in the sweep
        directory's layout (`PlannedRun.in_layout`)."""
        runs = []
        for replicate in range(self.replicates):
            if self.clean:
                runs.append(PlannedRun.in_layout("clean", None, 0.0, {}, replicate))
            for spec in self.noise:
                for alpha in spec.alphas:
                    point = run_name(spec.kind, alpha)
                    runs.append(PlannedRun.in_layout(point, spec.kind, alpha, spec.params, replicate))
        seen: set[str] = set()
        for run in runs:
            if run.name in seen:
                raise UsageError(f"run {run.name!r} appears twice in the grid; list each (kind, alpha) once")
            seen.add(run.name)
        return runs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _make(cls: type, values: Any, what: str) -> Any:
    if not isinstance(values, dict):
        raise UsageError(f"{what} must be a table, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown {what} key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise UsageError(f"bad {what} value: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Loading configs: presets shipped in the package, TOML/YAML/JSON files, overrides


def load_sweep_config(source: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    """A preset name (`demo`, `paper-124m`, `paper-774m`) or a TOML/YAML/JSON file, plus overrides.

    Overrides are ``key=value`` (or ``--key value``) with dotted keys into tables
    (``train.max_iters=100``, ``domains.arxiv=/data/arxiv``), parsed by
    `noisylm.training.config.parse_overrides`: each value as its field's type (``[train]`` keys as
    TrainConfig's), lists such as ``noise=[{kind="uniform", alphas=[0.1]}]`` as TOML values.
    """
    from noisylm.training.config import merge_overrides, parse_overrides

    values = _read_source(source)
    if overrides:
        values = merge_overrides(values, parse_overrides(overrides, sweep_fields(), "sweep config"))
    return _make(SweepConfig, values, "sweep config")


def sweep_fields() -> dict[str, Any]:
    """The type of every sweep config key for `parse_overrides` (``train`` as TrainConfig's fields)."""
    from noisylm.training.config import TrainConfig, field_types

    return {
        **field_types(SweepConfig),
        "train": field_types(TrainConfig),
        "downstream": field_types(DownstreamConfig),
    }


def _read_source(source: str | os.PathLike) -> dict[str, Any]:
    if str(source) in SWEEP_PRESETS:
        with resources.as_file(resources.files("noisylm.configs").joinpath(f"{source}.toml")) as path:
            return read_config_file(path)
    if not os.path.isfile(source) and os.path.splitext(str(source))[1] == "":
        raise UsageError(
            f"sweep config {source} not found; give a preset ({', '.join(SWEEP_PRESETS)}) "
            "or a .toml/.yaml/.json file"
        )
    return read_config_file(source)
