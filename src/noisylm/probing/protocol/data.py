"""The probe's input: one feature cache (`noisylm.probing.features` format) in memory, checked and
fingerprinted; its per-dimension std, and a copy with Gaussian feature noise (a simulated noisy backbone)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from noisylm.errors import NoisyLMError


@dataclass
class ProbeData:
    """One feature cache in memory: the three splits and what the cache says about itself."""

    backbone: str
    dataset: str
    num_classes: int
    class_names: list[str]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    source: str = ""
    feature_noise: float = 0.0  # σ of the noise added by `with_feature_noise` (0 = the cache as it is)


def load_probe_data(cache_dir: str | Path) -> ProbeData:
    """Read and check a feature cache (`noisylm.probing.features` format) for probing."""
    from noisylm.probing.features import load_features

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    meta: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        features, labels, meta = load_features(cache_dir, split)
        splits[split] = (features, labels)
    data = ProbeData(
        backbone=str(meta.get("backbone", "?")),
        dataset=str(meta.get("dataset", "?")),
        num_classes=int(meta["num_classes"]),
        class_names=[str(c) for c in meta.get("class_names", [])],
        splits=splits,
        source=str(cache_dir),
    )
    check_probe_data(data)
    return data


def check_probe_data(data: ProbeData) -> None:
    """The bad inputs a probe cannot recover from, each as one line naming the fix."""
    dims = {split: tuple(x.shape[1:]) for split, (x, _) in data.splits.items()}
    for split, (features, labels) in data.splits.items():
        if features.dim() != 2 or labels.shape != (features.shape[0],):
            raise NoisyLMError(
                f"{data.source}: {split} needs [N, d] features and [N] labels, got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}; re-extract the cache"
            )
        if len(labels) == 0:
            fix = "use more data or a smaller validation fraction" if split == "val" else "re-extract"
            raise NoisyLMError(f"{data.source}: the {split} split is empty; {fix}")
        bad = ~torch.isfinite(features).all(1)
        if bad.any():
            raise NoisyLMError(
                f"{data.source}: {int(bad.sum())} {split} feature rows hold NaN/inf "
                f"(first: row {int(bad.nonzero()[0, 0])}); re-extract the cache or drop those examples"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
            raise NoisyLMError(
                f"{data.source}: {split} labels outside 0..{data.num_classes - 1}; fix the label mapping"
            )
    if len(set(dims.values())) > 1:
        raise NoisyLMError(
            f"{data.source}: feature dimensions differ between splits {dims}; re-extract all splits "
            "with one backbone"
        )
    train_classes = torch.unique(data.splits["train"][1]).numel()
    if train_classes < 2:
        raise NoisyLMError(
            f"{data.source}: the training split has a single class; a classifier needs >= 2 labelled classes"
        )


def cache_fingerprint(data: ProbeData) -> str:
    """sha256 of a cache's tensors as loaded (the folder may move; its contents must not change)."""
    digest = hashlib.sha256(f"classes={data.num_classes}".encode())
    for split in ("train", "val", "test"):
        for tensor in data.splits[split]:
            digest.update(f"{split}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def feature_std(data: ProbeData) -> torch.Tensor:
    """The training split's per-dimension standard deviation (sample std, [d], float32); 0 for a
    constant dimension. The scale of ``--gamma-scale feature-std`` and of ``--feature-noise``."""
    features = data.splits["train"][0]
    if len(features) < 2:
        return torch.zeros(features.shape[1], dtype=torch.float32)
    return features.double().std(0).float()


def with_feature_noise(data: ProbeData, sigma: float, seed: int) -> ProbeData:
    """A copy of ``data`` whose features carry Gaussian noise of std σ × `feature_std` (per dimension),
    drawn once per example of every split from ``seed``: the frozen features of a noisier backbone.

    One standard-normal draw z (train, then val, then test rows) serves every σ, so the noise of σ₂ is
    that of σ₁ scaled by σ₂/σ₁. σ = 0 returns ``data`` itself (the features exactly as they are)."""
    if sigma == 0:
        return data
    scale = float(sigma) * feature_std(data)
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for split in ("train", "val", "test"):
        features, labels = data.splits[split]
        z = torch.randn(features.shape, generator=generator, dtype=torch.float32)
        splits[split] = (features + z * scale, labels)
    return replace(data, splits=splits, feature_noise=float(sigma))


class FeatureViews:
    """The caches as the probe sees them at each feature-noise σ: `with_feature_noise` copies, made on
    first use and kept (one copy of a cache per σ ≠ 0 probed)."""

    def __init__(self, datasets: list[ProbeData], seed: int) -> None:
        self.datasets, self.seed = datasets, seed
        self._noisy: dict[tuple[int, float], ProbeData] = {}

    def get(self, cache: int, sigma: float) -> ProbeData:
        key = (cache, float(sigma))
        if key not in self._noisy:
            self._noisy[key] = with_feature_noise(self.datasets[cache], sigma, self.seed)
        return self._noisy[key]
