"""Stage 3, many runs compared: sweeps of noisy pre-training runs and their report.

`sweep` (the config, the plan of runs, launching them, the summary) → `reporting` (`report`: loss
curves, the paper's figures, `report/index.html`).
"""

# Eager on purpose: a lazy __getattr__ would be shadowed by the submodule of the same name
# (`noisylm.data.preparation` the function, not the module) once that submodule is imported.

from noisylm.experiments.reporting import load_runs, report, write_index
from noisylm.experiments.sweep import SweepConfig, load_sweep_config, sweep, write_summary

__all__ = [
    "SweepConfig",
    "load_sweep_config",
    "sweep",
    "write_summary",
    "report",
    "load_runs",
    "write_index",
]
