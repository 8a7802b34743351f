"""Classification heads trained on frozen features (App. E.1.3).

`LinearHead` is a plain `nn.Linear` (so the closed-form LGM path in `noisylm.probing.lgm` recognises it);
`MLPHead` is the paper's two-layer MLP with hidden size equal to the feature dimension and ReLU.
Both expose `in_features` / `num_classes` so callers can check a feature cache against a head.
"""

from __future__ import annotations

import torch
from torch import nn

from noisylm.errors import NoisyLMError, UsageError

HEAD_KINDS = ("linear", "mlp")


class LinearHead(nn.Linear):
    """g(t) = W t + b with W of shape (num_classes, in_features)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        _check_sizes(in_features, num_classes)
        super().__init__(in_features, num_classes)
        self.num_classes = num_classes


class MLPHead(nn.Module):
    """g(t) = W2 relu(W1 t + b1) + b2; the hidden size defaults to the feature dimension (App. E.1.3)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int | None = None) -> None:
        _check_sizes(in_features, num_classes)
        super().__init__()
        hidden = in_features if hidden is None else hidden
        if hidden < 1:
            raise UsageError(f"MLP hidden size must be >= 1, got {hidden}")
        self.in_features, self.num_classes, self.hidden = in_features, num_classes, hidden
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(features)))


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """Build a head by name: ``linear`` or ``mlp``."""
    if kind == "linear":
        return LinearHead(in_features, num_classes)
    if kind == "mlp":
        return MLPHead(in_features, num_classes)
    raise UsageError(f"unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")


def check_features_fit(head: nn.Module, features: torch.Tensor, what: str = "features") -> None:
    """One clear error when features do not have the shape a head expects."""
    if features.dim() != 2:
        raise NoisyLMError(f"{what} must be a 2-D [N, d] tensor, got shape {tuple(features.shape)}")
    expected = getattr(head, "in_features", None)
    if expected is not None and features.shape[1] != expected:
        raise NoisyLMError(
            f"{what} have dimension {features.shape[1]} but the head expects {expected}; "
            "re-extract the features or build the head for this feature dimension"
        )


def _check_sizes(in_features: int, num_classes: int) -> None:
    if in_features < 1:
        raise UsageError(f"feature dimension must be >= 1, got {in_features}")
    if num_classes < 2:
        raise UsageError(f"a classification head needs >= 2 classes, got {num_classes}")
