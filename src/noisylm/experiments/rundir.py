"""One reader of a sweep directory: `SweepDir` and its `SweepRun` s (as `ShardSet` is for a shard set).

    >>> sweep = SweepDir.open("sweeps/demo")
    >>> [(run.name, run.status, run.alpha_achieved) for run in sweep.runs]   # in plan order
    >>> sweep.clean.final_eval()["eval"]["val"]

Everything is read on demand from the files of ``docs/contracts.md`` (``sweep.json``, each run's
``configs/<run>.json``, its shard set's ``manifest.json``, its run directory's ``metrics.jsonl`` and
``summary.json``); a run's status and metrics are read again at each call, so a view stays current
while the sweep runs. The summary (`write_summary`), the report and `noisylm theory` read sweeps
through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisylm.artifacts import read_json, read_jsonl
from noisylm.errors import NoisyLMError, UsageError
from noisylm.experiments.plan import SWEEP_FORMAT, PlannedRun, run_status

if TYPE_CHECKING:
    from noisylm.data.shards import ShardSet


def read_run_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a run directory's ``metrics.jsonl`` (a torn last line from a killed run is dropped;
    no file yet: []). `noisylm.training.metrics.read_metrics` reads one such file by its path."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


class SweepRun:
    """One run of a sweep directory: its plan entry and, read on demand, its files."""

    def __init__(self, root: Path, plan: PlannedRun):
        self.root = root  # the sweep directory
        self.plan = plan

    # What the plan says ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def kind(self) -> str | None:
        """The noise kind; None for the clean run."""
        return self.plan.kind

    @property
    def alpha(self) -> float:
        """The requested noise proportion (0 for the clean run); see `alpha_achieved`."""
        return self.plan.alpha

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.plan.params)

    @property
    def replicate(self) -> int:
        """Which repetition of its grid point the run is (0-based; seed and data seed + replicate)."""
        return self.plan.replicate

    @property
    def point(self) -> str:
        """The grid point's name, shared by its replicates (`clean`, `uniform-a0.05`)."""
        return self.plan.point

    @property
    def data_dir(self) -> Path:
        return self.root / self.plan.data

    @property
    def run_dir(self) -> Path:
        return self.root / self.plan.run_dir

    @property
    def train_config_path(self) -> Path:
        return self.root / self.plan.train_config

    def train_config(self) -> dict[str, Any]:
        """The run's TrainConfig fields as the sweep planned them (``configs/<run>.json``)."""
        return read_json(self.train_config_path, "run config")

    # Its data -----------------------------------------------------------------------------------------

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        """The manifest of the run's shard set; None when the shard set is not there (not prepared
        yet, or moved)."""
        path = self.data_dir / "manifest.json"
        return read_json(path, "shard manifest") if path.is_file() else None

    def shards(self) -> ShardSet | None:
        """The run's shard set, or None when it is not there."""
        from noisylm.data.shards import ShardSet

        return ShardSet.open(self.data_dir) if self.manifest is not None else None

    @property
    def noise(self) -> dict[str, Any] | None:
        """The noise record of the run's shard set (kind, α, spans, ...); None for clean data."""
        return (self.manifest or {}).get("noise")

    @property
    def alpha_achieved(self) -> float | None:
        """The share of noise tokens actually in the run's training data, or None when unknown.

        The one definition (summary, report): the ``alpha_achieved`` of the shard set's noise record;
        0.0 for the clean run trained on a shard set without noise (clean data has α = 0 only as the
        data of the clean run); None, never 0, when the shard set is missing, its noise record lacks the
        number, or a noisy run's shard set records no noise: a guessed 0 would read as "no noise".
        """
        if self.manifest is None:
            return None
        if self.noise is None:
            return 0.0 if self.kind is None else None
        achieved = self.noise.get("alpha_achieved")
        return float(achieved) if achieved is not None else None

    # Its training -------------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """ "finished" | "failed" | "interrupted" | "pending" (read from disk at each call)."""
        return run_status(self.run_dir)

    @property
    def error(self) -> str | None:
        """Why the run failed (its ``summary.json``'s ``error``), None unless it failed."""
        if self.status != "failed":
            return None
        return read_json(self.run_dir / "summary.json", "run summary").get("error")

    def metrics(self) -> list[dict[str, Any]]:
        """Every line of the run's ``metrics.jsonl``, train and eval."""
        return read_run_metrics(self.run_dir)

    def evals(self) -> list[dict[str, Any]]:
        """The eval lines ``{"iter", "tokens", "clean_tokens", "eval": {...}}``, one per iteration in
        order (a resumed run may log an iteration twice; its last line counts)."""
        by_iter = {int(m["iter"]): m for m in self.metrics() if "eval" in m}
        return [by_iter[i] for i in sorted(by_iter)]

    def final_eval(self) -> dict[str, Any] | None:
        """The eval line of the last evaluated iteration, None before the first eval."""
        evals = self.evals()
        return evals[-1] if evals else None

    def __repr__(self) -> str:
        run_dir = str(self.run_dir)
        return f"SweepRun({self.name!r}, kind={self.kind!r}, alpha={self.alpha:g}, run_dir={run_dir!r})"


class SweepDir:
    """A read-only view of a directory written by `noisylm sweep`.

    ``runs`` are in plan order (clean first, then each noise kind as configured); ``run(name)`` finds
    one, ``clean`` is the clean run (None when the sweep has none).
    """

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        self.meta = meta  # sweep.json
        source = path / "sweep.json"
        try:
            self.name: str = meta["name"]
            self.config: dict[str, Any] = meta["config"]
            entries = meta["runs"]
        except (KeyError, TypeError):
            raise NoisyLMError(
                f"{source} lacks name, config or runs; regenerate it with `noisylm sweep`"
            ) from None
        self.runs = [SweepRun(path, PlannedRun.from_entry(e, source)) for e in entries]
        self.clean_run: str | None = meta.get("clean_run")

    @classmethod
    def open(cls, path: str | os.PathLike) -> SweepDir:
        path = Path(path)
        if not (path / "sweep.json").is_file():
            raise NoisyLMError(f"{path} is not a sweep directory (no sweep.json); run `noisylm sweep` first")
        meta = read_json(path / "sweep.json", "sweep config")
        if not isinstance(meta, dict) or meta.get("format") != SWEEP_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise NoisyLMError(
                f"{path / 'sweep.json'} has format {found!r}, expected {SWEEP_FORMAT!r}; "
                "regenerate it with `noisylm sweep`"
            )
        return cls(path, meta)

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def domains(self) -> dict[str, Path]:
        """Extra eval domain name -> its shard set."""
        return {name: self.path / rel for name, rel in (self.meta.get("domains") or {}).items()}

    @property
    def clean(self) -> SweepRun | None:
        """The clean run of replicate 0 (None when the sweep has none); see `clean_of`."""
        return next((r for r in self.runs if r.name == self.clean_run), None)

    @property
    def replicates(self) -> int:
        """How many replicates each grid point has (1 for sweeps written before replicates existed)."""
        return max((r.replicate for r in self.runs), default=0) + 1

    def clean_of(self, run: SweepRun) -> SweepRun | None:
        """The clean run of ``run``'s replicate, its pair (None when the sweep has no clean run)."""
        if self.clean_run is None:
            return None
        return next((r for r in self.runs if r.kind is None and r.replicate == run.replicate), None)

    def replicate_runs(self, point: str) -> list[SweepRun]:
        """The runs of one grid point (`clean`, `uniform-a0.05`), replicate 0 first."""
        return sorted((r for r in self.runs if r.point == point), key=lambda r: r.replicate)

    @property
    def points(self) -> list[str]:
        """The grid points in plan order (each once, whatever the number of replicates)."""
        return list(dict.fromkeys(r.point for r in self.runs))

    def run(self, name: str) -> SweepRun:
        for run in self.runs:
            if run.name == name:
                return run
        raise UsageError(f"sweep {self.path} has no run {name!r}; it has: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    def __iter__(self) -> Iterator[SweepRun]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r}, name={self.name!r}, runs={self.names})"
