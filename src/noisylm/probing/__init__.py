"""How: heads on frozen features of a backbone, trained with CE or CE + the LGM loss.

`datasets` (labelled data: bundled, files, folders, Hugging Face) → `features` (templates, backbones,
extraction into a feature cache) → `heads` (linear, MLP) and `lgm` (the Local Gradient Matching loss) →
`protocol` (`probe`: the paper's probing protocol and its tables) → `study` (`lgm_study`: the LGM study's
four backbone × dataset cells, paper vs searched (γ, λ), and the feature-noise curve).
"""

# Eager on purpose: with a lazy __getattr__, importing a submodule would set the package attribute of
# that name first. Modules are also named unlike the functions they export (`preparation` -> `prepare`).

from noisylm.probing.datasets import BUILTIN_DATASETS, LabelledDataset, load_dataset
from noisylm.probing.features import (
    ExtractConfig,
    extract,
    load_backbone,
    load_features,
    parse_backbone,
    register_backbone,
)
from noisylm.probing.finetuning import finetune
from noisylm.probing.heads import LinearHead, MLPHead, make_head
from noisylm.probing.lgm import LGMLoss, lgm_penalty
from noisylm.probing.protocol import ProbeConfig, probe
from noisylm.probing.study import STUDY_CELLS, StudyConfig, lgm_study

__all__ = [
    "LabelledDataset",
    "load_dataset",
    "BUILTIN_DATASETS",
    "ExtractConfig",
    "extract",
    "load_features",
    "load_backbone",
    "parse_backbone",
    "register_backbone",
    "LinearHead",
    "MLPHead",
    "make_head",
    "LGMLoss",
    "lgm_penalty",
    "ProbeConfig",
    "probe",
    "finetune",
    "StudyConfig",
    "STUDY_CELLS",
    "lgm_study",
]
