"""The model that is fine-tuned: a Hugging Face encoder (all of its weights train), a pooling of its
last hidden states, dropout and a linear head (one logit per class, or one score for regression).

The encoder comes from the loaders of `noisylm extract` (`noisylm.probing.features.load_backbone`):
``minilm`` (the bundled all-MiniLM-L6-v2), ``sentence:PATH`` or ``hf:PATH`` / a bare model folder
holding an `AutoModel` (BERT, RoBERTa, ...). Pooling: a sentence-transformers folder's own mode (mean
for MiniLM; its final Normalize is left out: unit-norm features would cap the head's logits at ‖W‖),
else the first token (``cls``, as BERT's classifier). The head is initialised as BERT initialises its
layers (normal, std = the encoder's ``initializer_range``, zero bias), from the run's seed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from noisylm.errors import NoisyLMError, UsageError

POOLINGS = ("cls", "mean", "max", "mean_sqrt_len")
ENCODER_FAMILIES = ("minilm", "sentence", "hf")


@dataclass
class Encoder:
    """A loaded encoder, kept pristine (on the CPU, in eval mode): every run trains a copy.

    spec: how the user named it; hash: sha256 of its weight and config files; pooling: see POOLINGS;
    max_length: tokens kept per example (a pair is truncated longest-first); dropout: of the pooled
    features (the encoder's ``hidden_dropout_prob``, as BERT's classifier); init_std: of the head.
    """

    spec: str
    model: nn.Module
    tokenizer: Any
    pooling: str
    max_length: int
    hash: str
    dropout: float
    init_std: float

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def load_encoder(backbone: Any, *, max_length: int = 128, pooling: str | None = None) -> Encoder:
    """An `Encoder` from a backbone spec (``minilm``, ``sentence:PATH``, ``hf:PATH``, a model folder)
    or an already loaded `noisylm.probing.features.Backbone` of those kinds (to share one across calls)."""
    from noisylm.probing.features import Backbone, load_backbone, parse_backbone

    if pooling is not None and pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if max_length < 2:
        raise UsageError(f"max_length must be >= 2, got {max_length}")
    if isinstance(backbone, Backbone):
        loaded = backbone
    else:
        family, _ = parse_backbone(str(backbone))  # a missing folder is one clear error here
        if family not in ENCODER_FAMILIES:
            raise UsageError(
                f"backbone {backbone} is not a Hugging Face text encoder; fine-tuning takes minilm, "
                "sentence:PATH, hf:PATH or a model folder with config.json and a tokenizer"
            )
        loaded = load_backbone(str(backbone), device="cpu", max_length=max_length)
    model = getattr(loaded, "model", None)
    if model is None or not hasattr(model, "get_input_embeddings") or not hasattr(model, "config"):
        raise UsageError(
            f"backbone {loaded.spec} has no Hugging Face AutoModel to fine-tune (a sentence-transformers "
            "folder with an unusual module layout?); pass hf:PATH to its Transformer folder"
        )
    tokenizer = copy.copy(loaded.tokenizer)
    tokenizer.truncation_side = "right"  # the causal-LM loader keeps prompt ends; encoders keep starts
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        raise NoisyLMError(f"the tokenizer of {loaded.spec} has no padding token; use an encoder model")
    own_mode = getattr(loaded, "mode", None)  # a sentence-transformers folder's pooling
    default = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}.get(own_mode or "")
    if own_mode == "mean_sqrt_len_tokens":
        default = "mean_sqrt_len"
    config = model.config
    limit = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
    return Encoder(
        spec=loaded.spec,
        model=model.eval(),
        tokenizer=tokenizer,
        pooling=pooling or default or "cls",
        max_length=int(min(limit, getattr(config, "max_position_embeddings", limit) or limit)),
        hash=loaded.hash,
        dropout=float(getattr(config, "hidden_dropout_prob", 0.1) or 0.0),
        init_std=float(getattr(config, "initializer_range", 0.02) or 0.02),
    )


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, d] hidden states -> [B, d]: first token, or mean / max / sum/√len over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).amax(1)
    summed = (hidden * weights).sum(1)
    lengths = weights.sum(1).clamp_min(1.0)
    return summed / lengths if pooling == "mean" else summed / lengths.sqrt()


class FinetuneModel(nn.Module):
    """encoder -> pooling -> dropout -> linear head. Every parameter trains.

    ``features`` takes the word embeddings (``inputs_embeds``) rather than token ids, so that SMART can
    perturb them; `embed` looks them up (the same numbers the encoder computes from ids).
    """

    def __init__(self, encoder: nn.Module, pooling: str, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.regression = num_outputs == 1
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), num_outputs)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder.get_input_embeddings()(batch["input_ids"])

    def features(
        self, batch: dict[str, torch.Tensor], embeds: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """(pooled features after dropout [B, d], hidden states of every layer or None)."""
        extra = {k: v for k, v in batch.items() if k != "input_ids"}
        out = self.encoder(inputs_embeds=embeds, output_hidden_states=output_hidden_states, **extra)
        pooled = pool(out.last_hidden_state, batch["attention_mask"], self.pooling)
        return self.dropout(pooled), (tuple(out.hidden_states) if output_hidden_states else None)

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [B, C], or scores [B] for regression."""
        out = self.head(features)
        return out.squeeze(-1) if self.regression else out

    def forward(self, batch: dict[str, torch.Tensor], embeds: torch.Tensor | None = None) -> torch.Tensor:
        features, _ = self.features(batch, self.embed(batch) if embeds is None else embeds)
        return self.head_outputs(features)


def build_model(encoder: Encoder, num_outputs: int, seed: int, device: torch.device) -> FinetuneModel:
    """A fresh copy of the pristine encoder with a head initialised from ``seed``."""
    model = FinetuneModel(copy.deepcopy(encoder.model), encoder.pooling, num_outputs, encoder.dropout)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=generator) * encoder.init_std)
        model.head.bias.zero_()
    return model.to(device)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers (BERT-like ``encoder.layer``, DistilBERT's
    ``transformer.layer``, or the one ModuleList as long as ``config.num_hidden_layers``)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        module: Any = encoder
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    count = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(lists) == 1:
        return lists[0]
    raise UsageError(
        f"cannot find the transformer layers of {type(encoder).__name__} (LNSR injects noise at one); "
        "use a BERT-like encoder or another regulariser"
    )
