"""Stage 3, many runs compared: sweeps of noisy pre-training runs and their report.

`config` (`SweepConfig`, presets, `load_sweep_config`) → `plan` (`PlannedRun`: each run's noise, shard
set, run directory, TrainConfig; `run_status`) → `launch` (`sweep`: data, training or the commands for a
scheduler; `scheduler`: a SLURM job array) → `summary` (`write_summary`); `rundir` (`SweepDir`: the
one reader of a sweep directory) → `comparison` (each run against the clean run) → `reporting`
(`report`: the paper's figures and tables) → `index_page` (`write_index`: ``report/index.html``).
"""

# Eager on purpose: with a lazy __getattr__, importing a submodule would set the package attribute of
# that name first. Modules are also named unlike the functions they export (`preparation` -> `prepare`).

from noisylm.experiments.comparison import RunCurves, sweep_curves
from noisylm.experiments.config import SWEEP_PRESETS, NoiseSpec, SweepConfig, load_sweep_config
from noisylm.experiments.index_page import write_index
from noisylm.experiments.launch import sweep
from noisylm.experiments.plan import PlannedRun, run_name, run_status
from noisylm.experiments.reporting import report
from noisylm.experiments.rundir import SweepDir, SweepRun, read_run_metrics
from noisylm.experiments.scheduler import slurm_script, write_script
from noisylm.experiments.summary import write_summary

__all__ = [
    "SWEEP_PRESETS",
    "NoiseSpec",
    "SweepConfig",
    "load_sweep_config",
    "PlannedRun",
    "run_name",
    "run_status",
    "sweep",
    "slurm_script",
    "write_script",
    "write_summary",
    "SweepDir",
    "SweepRun",
    "read_run_metrics",
    "RunCurves",
    "sweep_curves",
    "report",
    "write_index",
]
