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
from noisylm.errors import UsageError
from noisylm.experiments.plan import PlannedRun, run_name

# Sweep presets (noisylm/configs/<name>.toml); not the GPT presets of `noisylm.model.PRESETS`.
SWEEP_PRESETS = ("demo", "paper-124m", "paper-774m")
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


@dataclass
class DownstreamConfig:
    """The downstream stage (the paper's Table 1 at sweep scale): after training, features of every
    run's final checkpoint on a labelled task, probed with CE and CE + L_gm at a fixed recipe.

    dataset: a bundled dataset name or a path (`noisylm extract`'s); the default is which of the bundled
    Shakespeare texts a passage comes from. runs: the runs to probe (empty = every run). heads,
    losses: as for `noisylm probe`. seeds: probe seeds per head and loss (mean ± std, and the pairs of
    the paired differences). epochs, lr, batch_size, gamma, lam: the one recipe every probe trains with
    (no grid search). pooling, max_length, extract_batch_size: feature extraction. max_train,
    max_test: stratified caps of the dataset's splits. split_seed: seed of the dataset's splits.
    device: where extraction and probing run.
    """

    dataset: str = "shakespeare-plays"
    runs: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=lambda: ["linear", "mlp"])
    losses: list[str] = field(default_factory=lambda: ["ce", "lgm"])
    seeds: int = 3
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    gamma: float = 0.01
    lam: float = 0.15
    pooling: str = "mean"
    max_length: int = 128
    extract_batch_size: int = 64
    max_train: int | None = None
    max_test: int | None = None
    split_seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise UsageError(f"downstream seeds must be >= 2 (mean ± std over them), got {self.seeds}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("downstream epochs, batch_size and lr must be positive")
        if "ce" not in self.losses:
            raise UsageError("downstream losses must include 'ce' (Table 1 compares CE with CE + L_gm)")
        if self.pooling not in ("mean", "last"):
            raise UsageError(f"downstream pooling {self.pooling!r} is not valid; use 'mean' or 'last'")
        self.heads, self.losses, self.runs = list(self.heads), list(self.losses), list(self.runs)


@dataclass
class SweepConfig:
    """A sweep: one clean corpus, a grid of noisy variants, one shared training recipe."""

    name: str = "sweep"
    # The clean training corpus: a bundled corpus name (`shakespeare`, `python-docs`), prepared into
    # data/clean with `tokenizer`, or the path of a shard set made with `noisylm prepare`.
    data: str | None = None
    tokenizer: str = "gpt2"  # for bundled corpora; a prepared shard set keeps its own
    # Extra eval domains (Fig. 4): eval-set name -> bundled corpus name or prepared shard set.
    domains: dict[str, str] = field(default_factory=dict)
    clean: bool = True  # include the α = 0 baseline (the report compares every run against it)
    noise: list[NoiseSpec] = field(default_factory=list)
    placement: str = "append"  # the paper appends the noise after the clean data; or "interleave"
    noise_seed: int = 0  # seed of the noise generator, the same for every noisy variant
    seed: int = 1337  # training seed, the same for every run (paired sampling)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every run
    launcher: str = "inprocess"  # "torchrun" launches each run as `torchrun ... noisylm train`
    nproc_per_node: int = 1  # processes per run under torchrun (GPUs per node)
    # Runs trained at once, each in its own `noisylm train` process on one thread (launcher "inprocess"
    # only): on a small CPU, two single-threaded runs use two cores better than one two-threaded run.
    parallel: int = 1
    # Each run (clean and noisy) repeated this many times: replicate r trains with seed + r and
    # data_seed + r on the same shard set, named `clean-r1`, `uniform-a0.05-r1` (r = 0: the plain name),
    # and the summary gives each paired difference with its 95% interval over the replicates.
    replicates: int = 1
    # The downstream stage (Table 1), run after training; None = no downstream stage.
    downstream: DownstreamConfig | None = None

    def __post_init__(self) -> None:
        self.noise = [n if isinstance(n, NoiseSpec) else _make(NoiseSpec, n, "noise") for n in self.noise]
        if self.downstream is not None and not isinstance(self.downstream, DownstreamConfig):
            self.downstream = _make(DownstreamConfig, self.downstream, "[downstream]")
        if self.replicates < 1:
            raise UsageError(f"replicates must be >= 1, got {self.replicates}")
        if not self.name or "/" in self.name:
            raise UsageError(f"sweep name {self.name!r} must be a non-empty name without '/'")
        if self.placement not in ("append", "interleave"):
            raise UsageError(f"placement {self.placement!r} is not valid; use 'append' or 'interleave'")
        if self.launcher not in LAUNCHERS:
            raise UsageError(f"launcher {self.launcher!r} is not valid; use one of: {', '.join(LAUNCHERS)}")
        if self.nproc_per_node < 1:
            raise UsageError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.parallel < 1:
            raise UsageError(f"parallel must be >= 1, got {self.parallel}")
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
        if not isinstance(self.train, dict):
            raise UsageError("[train] must be a table of TrainConfig fields")
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
