"""`extract`: run a frozen backbone once over every split of a labelled dataset into a feature cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisylm.artifacts import atomic_dir, atomic_write_json, check_output_dir, provenance
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.datasets import LabelledDataset, load_dataset, read_images
from noisylm.probing.features.backbones import Backbone, backbone_input_kind, load_backbone
from noisylm.probing.features.cache import CACHE_FORMAT, SPLITS
from noisylm.probing.features.templates import resolve_template


@dataclass
class ExtractConfig:
    """What `extract` does. Paths and names as for `noisylm extract`.

    backbone: backbone name or spec (module docstring);
    dataset: bundled name or path (noisylm.probing.datasets).
    template: Table 11 name, `wordnet`, or a string with {field}s; None = the dataset's default.
    pooling: "last" | "mean" for hf:/noisylm: backbones; None = the backbone's default.
    batch_size: examples per forward pass. max_length: prompt tokens kept (the end is kept).
    max_train / max_test: stratified caps (train before the validation split; test and a given val).
    val_fraction: validation share of train when the data has no validation split. seed: for all splits.
    device: auto | cpu | cuda[:N]. dtype: weight precision of hf:/noisylm: models (float32 | bfloat16 |
    float16). label_field / text_fields: columns of users' CSV/JSONL/HF data.
    """

    backbone: str
    dataset: str
    template: str | None = None
    pooling: str | None = None
    batch_size: int = 64
    max_length: int = 256
    max_train: int | None = None
    max_test: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    label_field: str = "label"
    text_fields: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.dataset = str(self.dataset)
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 1:
            raise UsageError(f"max_length must be >= 1, got {self.max_length}")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise UsageError(f"{name} must be >= 2, got {value}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.text_fields is not None:
            self.text_fields = tuple(self.text_fields)


def extract(
    backbone: str | Backbone,
    dataset: str | Path | LabelledDataset,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Extract features of every split of `dataset` with a frozen `backbone` into a cache at `out_dir`.

    `backbone` is a spec string or an already loaded `Backbone` (to reuse one across calls);
    `dataset` a name/path or a loaded `LabelledDataset` (then used as is). `options` are
    `ExtractConfig` fields. Nothing is written unless every split succeeds. Returns `out_dir`.
    """
    spec = backbone if isinstance(backbone, str) else backbone.spec
    data_name = dataset if not isinstance(dataset, LabelledDataset) else dataset.name
    config = ExtractConfig(backbone=spec, dataset=str(data_name), **options)
    out_dir = check_output_dir(out_dir, overwrite)
    if isinstance(dataset, LabelledDataset):
        data = dataset
    else:
        data = load_dataset(
            config.dataset,
            val_fraction=config.val_fraction,
            seed=config.seed,
            max_train=config.max_train,
            max_test=config.max_test,
            label_field=config.label_field,
            text_fields=config.text_fields,
        )
    template_name, template = resolve_template(config.template, data)
    _check_compatible(spec, backbone_input_kind(backbone), data)  # before loading a big model
    if isinstance(backbone, str):
        model = load_backbone(
            spec,
            device=config.device,
            pooling=config.pooling,
            max_length=config.max_length,
            dtype=config.dtype,
        )
    else:
        model = backbone
    if data.kind != "text":
        model.pixel_max = data.pixel_max

    features: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        part = data.splits[split]
        features[split] = _run_backbone(
            model, data, part.inputs, template, config.batch_size, split, progress
        )
        _check_finite(features[split], spec, split)

    from safetensors.torch import save_file

    meta = {
        "format": CACHE_FORMAT,
        **model.describe(),
        "dataset": data.name,
        "dataset_source": data.source,
        "dataset_kind": data.kind,
        "template": template,
        "template_name": template_name,
        "pooling": model.pooling,
        "max_length": config.max_length if data.kind == "text" else None,
        "dtype": model.dtype,
        "feature_dim": int(features["train"].shape[1]),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "splits": {s: int(len(data.splits[s])) for s in SPLITS},
        "split_notes": data.notes,
        "provenance": provenance(asdict(config), config.seed),
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for split in SPLITS:
            labels = torch.tensor(np.asarray(data.splits[split].labels), dtype=torch.int64)  # a copy
            save_file(
                {"features": features[split].contiguous(), "labels": labels.contiguous()},
                str(tmp / f"{split}.safetensors"),
                metadata={"format": CACHE_FORMAT, "split": split},
            )
        atomic_write_json(tmp / "meta.json", meta)
    return out_dir


def _check_compatible(spec: str, kind: str, data: LabelledDataset) -> None:
    if kind == "any":
        if data.kind == "text":
            raise UsageError(f"backbone {spec} takes images or feature vectors; dataset {data.name} is text")
        return
    if kind != data.kind:
        raise UsageError(f"backbone {spec} takes {kind} but dataset {data.name} holds {data.kind}s")


def _run_backbone(
    model: Backbone,
    data: LabelledDataset,
    inputs: Any,
    template: str | None,
    batch_size: int,
    split: str,
    progress: bool,
) -> torch.Tensor:
    from tqdm.auto import tqdm

    n = len(inputs)
    if data.kind == "text":
        prompts = [template.format_map(record) for record in inputs]
        empty = [i for i, p in enumerate(prompts) if not p.strip()]
        if empty:
            raise NoisyLMError(
                f"{len(empty)} {split} examples of {data.name} have an empty prompt "
                f"(first: example {empty[0]}); fill or drop empty texts, or use a template that adds words"
            )
        # Longest first: batches of similar length pad less, and an out-of-memory error comes early.
        order = np.argsort([-len(p) for p in prompts], kind="stable")
    else:
        order = np.arange(n)
    outputs = torch.empty(0)
    bar = tqdm(total=n, desc=f"extract {split}", unit="ex", disable=None if progress else True, leave=False)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            if data.kind == "text":
                batch = [prompts[i] for i in index]
            elif data.kind == "image":
                batch = read_images(inputs, index)
            else:
                batch = [inputs[i] for i in index]
            out = model.encode(batch).detach().float().cpu()
            if start == 0:
                outputs = torch.empty(n, out.shape[1], dtype=torch.float32)
            outputs[torch.from_numpy(index)] = out
            bar.update(len(index))
    bar.close()
    return outputs


def _check_finite(features: torch.Tensor, spec: str, split: str) -> None:
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        first = int(torch.nonzero(bad)[0, 0])
        raise NoisyLMError(
            f"backbone {spec} gave NaN/inf features for {int(bad.sum())} of {len(features)} {split} examples "
            f"(first: example {first}); check the backbone's weights and the input data; nothing was written"
        )
