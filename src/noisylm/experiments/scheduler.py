"""Handing a sweep to a SLURM cluster: `slurm_script` writes an ``sbatch`` job array with one task per
unfinished run, each task training its run under ``torchrun`` (``noisylm sweep --print-commands
--slurm``).

The runs were prepared by `sweep(..., print_commands=True)` (shard sets, ``configs/<run>.json``); a
task only runs ``noisylm train CONFIG --out RUN_DIR --resume``, so a task that is requeued or
resubmitted continues from its last checkpoint, and `noisylm sweep` / `noisylm report` collect the
finished runs afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from noisylm import __version__
from noisylm.artifacts import atomic_path
from noisylm.errors import NoisyLMError, UsageError
from noisylm.experiments.rundir import SweepDir

SCRIPT_MARKER = "# noisylm sweep job array"  # the second line of every script; `write_script` checks it
DEFAULT_TIME = "24:00:00"
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")  # sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
_PARTITION = re.compile(r"^[A-Za-z0-9_.,-]+$")


def slurm_script(
    sweep_dir: str | os.PathLike | SweepDir,
    only: Sequence[str] | None = None,
    *,
    partition: str | None = None,
    time: str = DEFAULT_TIME,
    gpus: int | None = None,
) -> str:
    """An ``sbatch`` array script: one task per run of the sweep that is not finished (of ``only``, when
    given), each ``torchrun --standalone --nproc_per_node=$GPUS -m noisylm train ...`` on one node.

    The ``#SBATCH`` lines hold the defaults: ``partition`` (None: the cluster's default partition, the
    line is left commented out), ``time`` (wall-clock limit per run), ``gpus`` per run (None: the
    sweep's ``nproc_per_node``); ``sbatch --time=... SCRIPT`` overrides any of them at submission, and
    ``GPUS=N sbatch ...`` the number of torchrun processes.
    """
    sweep = sweep_dir if isinstance(sweep_dir, SweepDir) else SweepDir.open(sweep_dir)
    if only:
        unknown = sorted(set(only) - set(sweep.names))
        if unknown:
            raise UsageError(f"unknown run(s) {unknown}; the sweep has: {', '.join(sweep.names)}")
    check_slurm_options(partition, time, gpus)
    gpus = int(sweep.config.get("nproc_per_node", 1)) if gpus is None else gpus
    selected = [r for r in sweep.runs if not only or r.name in only]
    runs = [r for r in selected if r.status != "finished"]
    if not runs:
        raise NoisyLMError(
            f"every selected run of {sweep.path} is finished; nothing to submit (`noisylm report` shows them)"
        )
    root = sweep.path.resolve()
    job = re.sub(r"[^A-Za-z0-9_.-]", "-", f"noisylm-{sweep.name}")
    partition_line = (
        f"#SBATCH --partition={partition}"
        if partition
        else "##SBATCH --partition=PARTITION   # (disabled: the cluster's default partition)"
    )
    lines = [
        "#!/bin/bash",
        f"{SCRIPT_MARKER} {sweep.name!r}: one array task per unfinished run "
        f"({len(runs)} of {len(selected)}; finished runs are left out).",
        f"# Written by noisylm {__version__} from {root / 'sweep.json'}; submit it with `sbatch SCRIPT`.",
        "# The #SBATCH lines are defaults: edit them, or override them at submission, e.g.",
        "#   sbatch --time=48:00:00 --partition=long SCRIPT      GPUS=4 sbatch --gpus-per-node=4 SCRIPT",
        "# Each task runs `torchrun` from PATH: submit from a shell where noisylm is installed (sbatch",
        "# passes that environment on). A task resumes its run from its last checkpoint, so resubmitting",
        "# this script (or a new one) after a timeout continues; `noisylm report` reads the finished runs.",
        f"#SBATCH --job-name={job}",
        f"#SBATCH --array=0-{len(runs) - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --time={time}",
        partition_line,
        f"#SBATCH --output={_log_path(root)}",
        "",
        "set -euo pipefail",
        "",
        'case "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}" in',
    ]
    for index, run in enumerate(runs):
        config = shlex.quote(str(run.train_config_path.resolve()))
        run_dir = shlex.quote(str(run.run_dir.resolve()))
        lines.append(f"  {index}) run={shlex.quote(run.name)} config={config} run_dir={run_dir} ;;")
    lines += [
        '  *) echo "array task $SLURM_ARRAY_TASK_ID has no run in this script" >&2; exit 2 ;;',
        "esac",
        "",
        f'GPUS="${{GPUS:-${{SLURM_GPUS_ON_NODE:-{gpus}}}}}"',
        f"echo {shlex.quote(f'noisylm sweep {sweep.name}:')} "
        '"array task $SLURM_ARRAY_TASK_ID trains $run on $GPUS GPU(s)" >&2',
        'exec torchrun --standalone --nproc_per_node="$GPUS" -m noisylm train "$config" '
        '--out "$run_dir" --resume',
    ]
    return "\n".join(lines) + "\n"


def check_slurm_options(partition: str | None, time: str, gpus: int | None) -> None:
    """Refuse #SBATCH values sbatch would not read (before a sweep is prepared for them)."""
    if gpus is not None and gpus < 1:
        raise UsageError(f"GPUs per run must be >= 1, got {gpus}")
    if not _TIME.match(time):
        raise UsageError(f"time limit {time!r} is not one sbatch reads; use e.g. 24:00:00 or 2-00:00:00")
    if partition is not None and not _PARTITION.match(partition):
        raise UsageError(f"partition {partition!r} is not a partition name; use e.g. gpu")


def _log_path(root: Path) -> str:
    """Each task's log, in the sweep directory; sbatch reads #SBATCH values unquoted, so a directory
    with a space in its path logs to the submission directory instead."""
    path = str(root / "slurm-%A_%a.out")
    return "slurm-%A_%a.out" if any(c.isspace() for c in path) else path


def write_script(path: str | os.PathLike, script: str) -> Path:
    """Write ``script`` to ``path`` atomically, executable. An existing file is replaced only when it is
    an earlier script of this kind, never another file given by mistake."""
    path = Path(path)
    if path.exists():
        try:
            head = path.read_text("utf-8", errors="replace").splitlines()[:2]
        except OSError:
            head = []
        if path.is_dir() or len(head) < 2 or not head[1].startswith(SCRIPT_MARKER):
            raise NoisyLMError(
                f"{path} exists and is not a job script noisylm wrote; "
                "choose another --out-script or remove it"
            )
    with atomic_path(path) as tmp:
        tmp.write_text(script, encoding="utf-8")
        tmp.chmod(0o755)
    return path
