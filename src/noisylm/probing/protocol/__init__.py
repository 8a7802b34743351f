"""The probing protocol of Sec. 4.3 / App. E: heads on cached frozen features, CE vs CE + LGM.

For every feature cache (one backbone on one dataset), feature-noise σ (``feature_noise``; 0 = the
cache as it is), head (`linear`, `mlp`) and loss (`ce`, `lgm`, and the ablations `norm`, `cosine`,
`l2-output`):

1. grid search on the validation split (learning rate × batch size, and γ scale × γ × λ for the
   penalised losses), one seed per grid point (``select_seeds`` > 1: a point scores its mean
   validation accuracy over that many seeds); the test split is never looked at here;
2. the selected setting trained with N seeds (the preset's: 5, or 8 for `study`); test accuracy as
   mean ± std. Seed s of every loss starts from the same head weights and sees the same batch order,
   and every penalised loss is also trained at CE's selected lr and batch size (the "paired" runs),
   so that its difference to CE is measured seed by seed with only the penalty changed (`paired`:
   mean, standard error, t-based 95% interval, exact sign-flip p-value from 6 seeds);
3. a scikit-learn logistic regression with C chosen on validation: the reference row of the main
   table (linear-head columns).

Optional: the γ, λ sensitivity grid of Table 6, the input-sensitivity plot of Figure 6, L2-SP
anchoring (α/2)‖θ − θ₀‖² to the head's initial weights (``anchor_weight``) and initial head weights
from a file (``init_head``; the backbone-anchoring L2-SP of Table 4 is `noisylm finetune`).

    out_dir/
      probe.json        resolved config, the caches probed, provenance
      results.jsonl     one line per training run: phase (select | final | paired | sensitivity |
                        logreg-select | logreg | figure6), backbone, dataset, head, loss,
                        hyper-parameters, seed, feature noise σ, val/test accuracy
      summary.json      per (backbone, dataset, σ, head, loss): mean/std test accuracy, selected setting,
                        paired difference to CE; logistic regression; accuracy against σ
      table_main.md/.csv           Tables 1-3: rows backbone (+ L_gm), logistic regression; columns
                                   dataset x head, Avg
      table_paired.md/.csv         paired difference of each penalised loss to CE
      table_ablation.md/.csv       Table 5 (when losses other than ce/lgm are probed)
      table_sensitivity.md/.csv    Table 6 (with `sensitivity`)
      table_feature_noise.md/.csv, feature_noise.png   accuracy against σ (with several σ)
      figure6.png                  Figure 6 (with `figure6`)

While it runs, the probe works in ``<out_dir>.partial/``, from which ``resume=True`` continues after a
crash or Ctrl-C (see `resume`); ``jobs`` > 1 trains the runs of each phase in worker processes (see
`workers`).

Modules, in data-flow order: `config` (ProbeConfig, presets, loss and head names) → `data` (a feature
cache in memory, its feature noise) → `training` (one head trained, one run's record) and `baseline`
(the logistic regression) → `resume` (the ``.partial/`` state) and `workers` (runs trained here or in
a process pool) → `phases` (`probe`: the phases) → `paired` (statistics over seeds) → `tables` (Tables
1-3, 5, 6, paired, feature noise) and `figures` (Figure 6, feature noise); `demo` is `make demo`'s
probe step.
"""

from noisylm.probing.protocol.baseline import LOGREG_LABEL, LogRegSpec, fit_logistic_regression
from noisylm.probing.protocol.config import (
    GAMMA_SCALES,
    HEAD_LABELS,
    LOGREG_CS,
    LOSS_LABELS,
    LOSSES,
    PAPER_SENSITIVITY,
    PRESET_SEEDS,
    PRESETS,
    ProbeConfig,
    Recipe,
)
from noisylm.probing.protocol.data import (
    FeatureViews,
    ProbeData,
    check_probe_data,
    feature_std,
    load_probe_data,
    with_feature_noise,
)
from noisylm.probing.protocol.demo import demo_probe
from noisylm.probing.protocol.figures import feature_noise_figure, figure6
from noisylm.probing.protocol.paired import (
    MIN_SEEDS_FOR_P,
    PairedDifference,
    paired_difference,
    sign_flip_p_value,
    t_interval,
)
from noisylm.probing.protocol.phases import probe
from noisylm.probing.protocol.resume import PARTIAL_FORMAT, SPEC_FIELDS, partial_dir
from noisylm.probing.protocol.tables import paired_line, summary_lines
from noisylm.probing.protocol.training import (
    RunSpec,
    accuracy,
    initial_head,
    load_init_head,
    make_optimizer,
    perturbation_scale,
    train_head,
)

__all__ = [
    "GAMMA_SCALES",
    "HEAD_LABELS",
    "LOGREG_CS",
    "LOGREG_LABEL",
    "LOSSES",
    "LOSS_LABELS",
    "MIN_SEEDS_FOR_P",
    "PAPER_SENSITIVITY",
    "PARTIAL_FORMAT",
    "PRESETS",
    "PRESET_SEEDS",
    "SPEC_FIELDS",
    "FeatureViews",
    "LogRegSpec",
    "PairedDifference",
    "ProbeConfig",
    "ProbeData",
    "Recipe",
    "RunSpec",
    "accuracy",
    "check_probe_data",
    "demo_probe",
    "feature_noise_figure",
    "feature_std",
    "figure6",
    "fit_logistic_regression",
    "initial_head",
    "load_init_head",
    "load_probe_data",
    "make_optimizer",
    "paired_difference",
    "partial_dir",
    "perturbation_scale",
    "probe",
    "sign_flip_p_value",
    "summary_lines",
    "paired_line",
    "t_interval",
    "train_head",
    "with_feature_noise",
]
