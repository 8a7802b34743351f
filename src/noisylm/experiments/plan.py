"""The plan of a sweep: one `PlannedRun` per grid point (its noise, its shard set, run directory and
TrainConfig file), run names, each run's TrainConfig and its status on disk.

The plan is what ``sweep.json`` lists under ``runs``; `noisylm.experiments.rundir.SweepDir` reads it
back.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisylm.artifacts import read_json
from noisylm.errors import NoisyLMError

if TYPE_CHECKING:
    from noisylm.experiments.config import SweepConfig

SWEEP_FORMAT = "noisylm-sweep/1"
RUN_STATUSES = ("finished", "interrupted", "pending", "failed")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its grid point and where its files are (one entry of ``sweep.json``'s runs).

    Paths are relative to the sweep directory, so the directory can be moved; a shard set outside it
    (a prepared clean corpus given as the sweep's ``data``) is absolute.
    """

    name: str  # the run's name, also the name of its directories (`run_name`)
    kind: str | None  # the noise kind; None for the clean run
    alpha: float  # the requested noise proportion; 0 for the clean run
    params: dict[str, Any]  # noise parameters passed to `inject`
    data: str  # the shard set it trains on
    run_dir: str  # its trainer run directory
    train_config: str  # its TrainConfig as JSON (what `noisylm train` is given)
    # Which repetition of its grid point (0-based): replicate r trains with seed + r and data_seed + r
    # on the same shard set (the noise seed is not varied), so replicates pair run by run.
    replicate: int = 0

    @classmethod
    def in_layout(
        cls, point: str, kind: str | None, alpha: float, params: dict[str, Any], replicate: int = 0
    ) -> PlannedRun:
        """A run placed in the sweep directory's layout: ``data/POINT`` (shared by the replicates of the
        grid point), ``runs/NAME``, ``configs/NAME.json`` with NAME = `replicate_name` (the sweep moves
        the clean run's ``data`` to where its corpus is)."""
        name = replicate_name(point, replicate)
        return cls(
            name,
            kind,
            float(alpha),
            dict(params),
            f"data/{point}",
            f"runs/{name}",
            f"configs/{name}.json",
            int(replicate),
        )

    @property
    def point(self) -> str:
        """The grid point's name, the same for all its replicates (`clean`, `uniform-a0.05`)."""
        return "clean" if self.kind is None else run_name(self.kind, self.alpha)

    def entry(self) -> dict[str, Any]:
        """The run as ``sweep.json`` lists it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_entry(cls, entry: Any, source: Path) -> PlannedRun:
        """Read one ``sweep.json`` run entry back; ``source`` names the file in errors."""
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [
            k
            for k in fields
            if k not in ("params", "replicate") and k not in (entry if isinstance(entry, dict) else {})
        ]
        if missing:
            raise NoisyLMError(
                f"{source} has a run entry without {', '.join(missing)}; regenerate it with `noisylm sweep`"
            )
        return cls(
            name=entry["name"],
            kind=entry["kind"],
            alpha=float(entry["alpha"]),
            params=dict(entry.get("params") or {}),
            data=entry["data"],
            run_dir=entry["run_dir"],
            train_config=entry["train_config"],
            replicate=int(entry.get("replicate", 0)),  # sweeps written before replicates existed
        )


def run_name(kind: str, alpha: float) -> str:
    """`uniform-a0.05`: the directory name of the run with ``kind`` noise at proportion ``alpha``."""
    return f"{kind}-a{alpha:g}"


def replicate_name(point: str, replicate: int) -> str:
    """`uniform-a0.05-r1`: replicate ``replicate`` of a grid point; replicate 0 keeps the plain name."""
    return point if replicate == 0 else f"{point}-r{replicate}"


def relative_to_sweep(path: Path, root: Path) -> str:
    """Paths inside the sweep directory are stored relative to it (the directory can be moved)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def train_config_for(
    config: SweepConfig, data_dir: Path, domains: dict[str, Path], replicate: int = 0
) -> dict[str, Any]:
    """The TrainConfig fields of one run: the shared recipe plus this run's data and eval sets; replicate
    r moves both the seed and the data seed by r (a data seed left unset follows the seed)."""
    values = copy.deepcopy(config.train)
    values["data"] = str(Path(data_dir).resolve())
    values["eval_sets"] = {name: str(Path(p).resolve()) for name, p in domains.items()}
    values["seed"] = config.seed + replicate
    if replicate and values.get("data_seed") is not None:
        values["data_seed"] = int(values["data_seed"]) + replicate
    return values


# --------------------------------------------------------------------------------------------------
# Run status


def run_status(run_dir: Path) -> str:
    """ "finished" | "failed" | "interrupted" (has a checkpoint to resume from) | "pending"."""
    summary_path = Path(run_dir) / "summary.json"
    if summary_path.is_file():
        try:
            status = read_json(summary_path, "run summary").get("status")
        except NoisyLMError:
            status = None
        if status in ("finished", "failed"):
            return status
    if has_checkpoint(run_dir):
        return "interrupted"
    return "pending"


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run kept a checkpoint to resume from."""
    ckpts = Path(run_dir) / "checkpoints"
    return ckpts.is_dir() and any(p.name.startswith("ckpt-") for p in ckpts.iterdir())
