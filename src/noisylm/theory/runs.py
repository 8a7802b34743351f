"""Reading a sweep directory as `noisylm theory` needs it: the clean run h*, the noisy runs, their
checkpoints and the achieved α of their shard sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisylm.artifacts import read_json
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
    """``sweep.json``, the clean run and the noisy runs that have at least one checkpoint."""
    if not (sweep_dir / "sweep.json").is_file():
        raise NoisyLMError(f"{sweep_dir} is not a sweep directory (no sweep.json); run `noisylm sweep` first")
    meta = read_json(sweep_dir / "sweep.json", "sweep config")
    runs = []
    for entry in meta["runs"]:
        data = sweep_dir / entry["data"]
        alpha = float(entry["alpha"])
        manifest = data / "manifest.json"
        if entry["kind"] is not None and manifest.is_file():
            record = read_json(manifest, "shard manifest").get("noise") or {}
            alpha = float(record.get("alpha_achieved", alpha))
        run_dir = sweep_dir / entry["run_dir"]
        params = dict(entry.get("params") or {})
        runs.append(
            RunInfo(entry["name"], entry["kind"], alpha, params, data, run_dir, _checkpoints(run_dir))
        )
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
