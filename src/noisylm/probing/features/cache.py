"""The feature cache `extract` writes and the probe reads (it never re-runs the backbone)::

cache_dir/
  train.safetensors, val.safetensors, test.safetensors   "features" float32 [N, d], "labels" int64 [N]
  meta.json   backbone, backbone_hash, dataset, template, pooling, feature_dim, num_classes,
              class_names, splits, provenance
"""

from __future__ import annotations

from pathlib import Path

import torch

from noisylm.artifacts import read_json
from noisylm.errors import NoisyLMError

CACHE_FORMAT = "noisylm-features/1"
SPLITS = ("train", "val", "test")


def load_features(cache_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features float32 [N, d], labels int64 [N], meta) of one split of a feature cache."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise NoisyLMError(
            f"feature cache {cache_dir} not found; run `noisylm extract ... --out {cache_dir}` first"
        )
    meta = read_json(cache_dir / "meta.json", "feature cache metadata")
    if meta.get("format") != CACHE_FORMAT:
        raise NoisyLMError(
            f"{cache_dir} is not a noisylm feature cache (format {meta.get('format')!r}); re-extract"
        )
    if split not in meta.get("splits", {}):
        raise NoisyLMError(
            f"feature cache {cache_dir} has no split {split!r} (it has {', '.join(meta.get('splits', {}))})"
        )
    path = cache_dir / f"{split}.safetensors"
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise NoisyLMError(f"cannot read {path}: {exc}; re-extract the cache") from None
    features, labels = tensors.get("features"), tensors.get("labels")
    if features is None or labels is None or features.ndim != 2 or labels.shape != (features.shape[0],):
        raise NoisyLMError(f"{path} lacks [N, d] 'features' and [N] 'labels' tensors; re-extract the cache")
    if features.shape[1] != meta["feature_dim"] or len(labels) != meta["splits"][split]:
        raise NoisyLMError(
            f"{path} does not match meta.json (shape {tuple(features.shape)}); re-extract the cache"
        )
    if not torch.isfinite(features).all():
        raise NoisyLMError(f"{path} holds NaN/inf features; re-extract the cache")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= meta["num_classes"]):
        raise NoisyLMError(f"{path} has labels outside 0..{meta['num_classes'] - 1}; re-extract the cache")
    return features.float(), labels.long(), meta
