"""Full fine-tuning with the LGM loss beside L2-SP, SMART and LNSR: the paper's Table 4.

`data` (tasks: GLUE folders, the formats `noisylm extract` reads, bundled WordNet tasks; metrics) →
`model` (a Hugging Face encoder + pooling + linear head, every weight trained) → `regularisers`
(none, L2-SP, SMART, LNSR) and `gradient_matching` (L_gm on the head with its gradient into the
backbone; the squared-error variant for regression) → `trainer` (one run) → `protocol` (`finetune`:
selection, seeds, paired differences, the Table 4 layout, resume).
"""

from noisylm.probing.finetuning.data import BUNDLED_TASKS, GLUE_TASKS, FinetuneTask, load_task, task_metrics
from noisylm.probing.finetuning.gradient_matching import squared_error_lgm
from noisylm.probing.finetuning.model import FinetuneModel, load_encoder
from noisylm.probing.finetuning.protocol import PRESETS, FinetuneConfig, finetune, paired_difference
from noisylm.probing.finetuning.regularisers import L2SP, LNSR, REGULARISERS, SMART, make_regulariser
from noisylm.probing.finetuning.trainer import RunSettings, train_run

__all__ = [
    "BUNDLED_TASKS",
    "GLUE_TASKS",
    "L2SP",
    "LNSR",
    "PRESETS",
    "REGULARISERS",
    "SMART",
    "FinetuneConfig",
    "FinetuneModel",
    "FinetuneTask",
    "RunSettings",
    "finetune",
    "load_encoder",
    "load_task",
    "make_regulariser",
    "paired_difference",
    "squared_error_lgm",
    "task_metrics",
    "train_run",
]
