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

    @classmethod
    def in_layout(cls, name: str, kind: str | None, alpha: float, params: dict[str, Any]) -> PlannedRun:
        """A run placed in the sweep directory's layout: ``data/NAME``, ``runs/NAME``,
        ``configs/NAME.json`` (the sweep moves the clean run's ``data`` to where its corpus is)."""
        return cls(
            name, kind, float(alpha), dict(params), f"data/{name}", f"runs/{name}", f"configs/{name}.json"
        )

    def entry(self) -> dict[str, Any]:
        """The run as ``sweep.json`` lists it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_entry(cls, entry: Any, source: Path) -> PlannedRun:
        """Read one ``sweep.json`` run entry back; ``source`` names the file in errors."""
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in fields if k != "params" and k not in (entry if isinstance(entry, dict) else {})]
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
        )


def run_name(kind: str, alpha: float) -> str:
    """`uniform-a0.05`: the directory name of the run with ``kind`` noise at proportion ``alpha``."""
    return f"{kind}-a{alpha:g}"


def relative_to_sweep(path: Path, root: Path) -> str:
    """Paths inside the sweep directory are stored relative to it (the directory can be moved)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def train_config_for(config: SweepConfig, data_dir: Path, domains: dict[str, Path]) -> dict[str, Any]:
    """The TrainConfig fields of one run: the shared recipe plus this run's data and eval sets."""
    values = copy.deepcopy(config.train)
    values["data"] = str(Path(data_dir).resolve())
    values["eval_sets"] = {name: str(Path(p).resolve()) for name, p in domains.items()}
    values["seed"] = config.seed
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
