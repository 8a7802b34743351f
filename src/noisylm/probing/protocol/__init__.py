"""The probing protocol of Sec. 4.3 / App. E: heads on cached frozen features, CE vs CE + LGM.

For every feature cache (one backbone on one dataset), head (`linear`, `mlp`) and loss (`ce`, `lgm`,
and the ablations `norm`, `cosine`, `l2-output`):

1. grid search on the validation split (learning rate × batch size, and γ × λ for the penalised
   losses), one seed per grid point (``select_seeds`` > 1: a point scores its mean validation
   accuracy over that many seeds); the test split is never looked at here;
2. the selected setting trained with N seeds (default 5); test accuracy reported as mean ± std.

Optional: the γ, λ sensitivity grid of Table 6, the input-sensitivity plot of Figure 6, L2-SP
anchoring (α/2)‖θ − θ₀‖² to the head's initial weights (``anchor_weight``) and initial head weights
from a file (``init_head``; Table 4's setting).

    out_dir/
      probe.json        resolved config, the caches probed, provenance
      results.jsonl     one line per training run: phase (select | final | sensitivity | figure6),
                        backbone, dataset, head, loss, hyper-parameters, seed, val/test accuracy
      summary.json      per (backbone, dataset, head, loss): mean/std test accuracy, selected setting
      table_main.md/.csv           Tables 1-3: rows backbone (+ L_gm), columns dataset x head, Avg
      table_ablation.md/.csv       Table 5 (when losses other than ce/lgm are probed)
      table_sensitivity.md/.csv    Table 6 (with `sensitivity`)
      figure6.png                  Figure 6 (with `figure6`)

While it runs, the probe works in ``<out_dir>.partial/``, from which ``resume=True`` continues after a
crash or Ctrl-C (see `resume`); ``jobs`` > 1 trains the runs of each phase in worker processes (see
`workers`).

Modules, in data-flow order: `config` (ProbeConfig, presets, loss and head names) → `data` (a feature
cache in memory) → `training` (one head trained, one run's record) → `resume` (the ``.partial/``
state) and `workers` (runs trained here or in a process pool) → `protocol` (`probe`: the phases) →
`tables` (Tables 1-3, 5, 6) and `figures` (Figure 6); `demo` is `make demo`'s probe step.
"""

from noisylm.probing.protocol.config import (
    HEAD_LABELS,
    LOSS_LABELS,
    LOSSES,
    PAPER_SENSITIVITY,
    PRESETS,
    ProbeConfig,
    Recipe,
)
from noisylm.probing.protocol.data import ProbeData, check_probe_data, load_probe_data
from noisylm.probing.protocol.demo import demo_probe
from noisylm.probing.protocol.figures import figure6
from noisylm.probing.protocol.phases import probe
from noisylm.probing.protocol.resume import PARTIAL_FORMAT, SPEC_FIELDS, partial_dir
from noisylm.probing.protocol.training import (
    RunSpec,
    accuracy,
    initial_head,
    load_init_head,
    make_optimizer,
    train_head,
)

__all__ = [
    "HEAD_LABELS",
    "LOSSES",
    "LOSS_LABELS",
    "PAPER_SENSITIVITY",
    "PARTIAL_FORMAT",
    "PRESETS",
    "SPEC_FIELDS",
    "ProbeConfig",
    "ProbeData",
    "Recipe",
    "RunSpec",
    "accuracy",
    "check_probe_data",
    "demo_probe",
    "figure6",
    "initial_head",
    "load_init_head",
    "load_probe_data",
    "make_optimizer",
    "partial_dir",
    "probe",
    "train_head",
]
