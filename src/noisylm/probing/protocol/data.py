"""The probe's input: one feature cache (`noisylm.probing.features` format) in memory, checked and
fingerprinted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
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
