"""Features from frozen ("black-box") backbones, cached for probing.

`templates` (the paper's Table 11 prompts, `{field}` strings) → `backbones` (the `Backbone` classes and
the name → loader registry, extensible with `register_backbone`) → `extraction` (`extract`: run a
backbone once over every split of a labelled dataset) → `cache` (the feature cache on disk and
`load_features`, which the probe reads instead of re-running the backbone).
"""

# Eager on purpose, as every package here: see noisylm.probing.

from noisylm.probing.features.backbones import (
    BACKBONES,
    WEIGHT_DTYPES,
    Backbone,
    BackboneRequest,
    CausalLM,
    ImageBackbone,
    NoisyLMCheckpoint,
    Pixels,
    SentenceEncoder,
    backbone_input_kind,
    load_backbone,
    parse_backbone,
    register_backbone,
)
from noisylm.probing.features.cache import CACHE_FORMAT, SPLITS, load_features
from noisylm.probing.features.extraction import ExtractConfig, extract
from noisylm.probing.features.templates import TEMPLATES, resolve_template, template_fields

__all__ = [
    "TEMPLATES",
    "resolve_template",
    "template_fields",
    "Backbone",
    "BackboneRequest",
    "BACKBONES",
    "WEIGHT_DTYPES",
    "SentenceEncoder",
    "CausalLM",
    "NoisyLMCheckpoint",
    "ImageBackbone",
    "Pixels",
    "register_backbone",
    "load_backbone",
    "parse_backbone",
    "backbone_input_kind",
    "ExtractConfig",
    "extract",
    "CACHE_FORMAT",
    "SPLITS",
    "load_features",
]
