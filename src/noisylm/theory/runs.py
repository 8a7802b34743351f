"""Reading a sweep directory as `noisylm theory` needs it: the clean run h*, the noisy runs, their
checkpoints and the achieved α of their shard sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisylm.errors import NoisyLMError


@dataclass
class RunInfo:
    """One run of the sweep as `theory` needs it (from ``sweep.json``, its manifest and its checkpoints)."""

    name: str
    kind: str | None
    alpha: float  # achieved α of the shard set (requested α when unknown)
    params: dict[str, Any]  # the noise parameters as the sweep passed them to `inject`
    data: Path
    run_dir: Path
    checkpoints: dict[int, Path]  # iteration -> checkpoint directory


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    """iteration -> checkpoint directory, for every complete checkpoint the run kept."""
    from noisylm.training.checkpoint import list_checkpoints

    return {int(path.name.removeprefix("ckpt-")): path for path in list_checkpoints(run_dir / "checkpoints")}


def load_sweep(sweep_dir: Path) -> tuple[dict[str, Any], RunInfo, list[RunInfo]]:
    """``sweep.json``, the clean run and the noisy runs that have at least one checkpoint (read through
    `experiments.rundir.SweepDir`, the one reader of a sweep directory); replicate 0 only."""
    from noisylm.experiments.rundir import SweepDir

    sweep = SweepDir.open(sweep_dir)
    runs = []
    # Prop. 1 compares each noisy run with h*, the clean run trained with the same seed: with
    # replicates, that is replicate 0's pairs (the others have their own clean run).
    for run in (r for r in sweep if r.replicate == 0):
        achieved = run.alpha_achieved if run.kind is not None else None
        alpha = float(achieved if achieved is not None else run.alpha)
        runs.append(
            RunInfo(
                run.name,
                run.kind,
                alpha,
                dict(run.params),
                run.data_dir,
                run.run_dir,
                _checkpoints(run.run_dir),
            )
        )
    meta = sweep.meta
    clean = next((r for r in runs if r.name == meta.get("clean_run")), None)
    if clean is None:
        raise NoisyLMError(
            f"sweep {sweep_dir} has no clean run; Prop. 1 compares against h* trained on clean data, "
            "so run a sweep with clean = true"
        )
    if not clean.checkpoints:
        raise NoisyLMError(f"the clean run {clean.run_dir} has no checkpoint yet; run or resume the sweep")
    noisy = [r for r in runs if r.kind is not None and r.checkpoints]
    if not noisy:
        raise NoisyLMError(f"no noisy run of {sweep_dir} has a checkpoint yet; run or resume the sweep")
    return meta, clean, noisy
