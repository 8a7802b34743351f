"""L_gm (Eq. 3, 4) while the whole backbone trains: on the head's parameters, with its input features
perturbed, and with its gradient flowing through the features into the backbone.

For the head g_θ on the pooled features t of a batch, with fresh δ ~ N(0, I) each step,

    t̂ = t + γ δ,    L_gm = ‖ mean_i ∇θ ℓ(g(t_i), y_i) − mean_i ∇θ ℓ(g(t̂_i), y_i) ‖₂      (θ: the head)

as in `noisylm.probing.lgm`, but t is not frozen: it is a function of the backbone's weights, and
L_gm's gradient reaches them through t (and t̂). Classification (ℓ = cross-entropy) goes through
`noisylm.probing.lgm.lgm_penalty`, whose linear-head closed form is differentiable in the features.
Regression (ℓ = squared error (g(t) − y)², STS-B) is `squared_error_lgm` here; `LGMLoss` has no
squared-error ℓ (it could move there later).
"""

from __future__ import annotations

import torch
from torch import nn

from noisylm.errors import NoisyLMError
from noisylm.probing.lgm import LGMTerms, lgm_penalty


def squared_error_lgm(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 0.01,
    generator: torch.Generator | None = None,
    delta: torch.Tensor | None = None,
) -> LGMTerms:
    """Mean squared error and L_gm of a regression head on one batch, with ℓ(z, y) = ‖z − y‖².

    features [B, d]; targets [B] (one output) or [B, C]; δ drawn from ``generator`` unless ``delta``
    [B, d] is given. Returns (mse, L_gm, predictions) with predictions shaped like targets.

    For a linear head z = W t + b, with Z = T Wᵀ + b, Ẑ = Z + γ Δ Wᵀ, E = Z − Y, Ê = Ẑ − Y:

        mean ∇W ℓ(t) − mean ∇W ℓ(t̂) = (2/B) [E − Ê; −γ Ê]ᵀ [T; Δ],   E − Ê = −γ Δ Wᵀ,
        mean ∇b ℓ(t) − mean ∇b ℓ(t̂) = (2/B) (E − Ê)ᵀ 1,

    written so that the O(γ) difference never comes from cancelling two O(1) gradients. Any other
    head goes through autograd (the gradient of the difference of the two mean losses, then double
    backward). Differentiable in the head's parameters and in the features.
    """
    if features.dim() != 2:
        raise NoisyLMError(f"features must be a 2-D [B, d] tensor, got shape {tuple(features.shape)}")
    if targets.shape[0] != features.shape[0]:
        raise NoisyLMError(f"{targets.shape[0]} targets for {features.shape[0]} feature rows")
    squeeze = targets.dim() == 1
    y = targets.to(features.dtype).reshape(features.shape[0], -1)
    if delta is None:
        delta = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
    batch = features.shape[0]
    if isinstance(head, nn.Linear):
        both = torch.cat([features, delta])  # [T; Δ]
        products = both @ head.weight.T
        z = products[:batch] if head.bias is None else products[:batch] + head.bias
        shift = gamma * products[batch:]  # Ẑ − Z = γ Δ Wᵀ
        err, err_hat = z - y, z + shift - y
        coeffs = torch.cat([-shift, -gamma * err_hat])  # [E − Ê; −γ Ê]
        diff_w = coeffs.T @ both * (2.0 / batch)
        sq = diff_w.pow(2).sum()
        if head.bias is not None:
            sq = sq + (-shift.sum(0) * (2.0 / batch)).pow(2).sum()
        mse = err.pow(2).sum(1).mean()
    else:
        z_all = head(torch.cat([features, features + gamma * delta])).reshape(2 * batch, -1)
        z = z_all[:batch]
        mse = (z - y).pow(2).sum(1).mean()
        difference = mse - (z_all[batch:] - y).pow(2).sum(1).mean()
        params = [p for p in head.parameters() if p.requires_grad]
        grads = torch.autograd.grad(difference, params, create_graph=True, allow_unused=True)
        sq = sum(g.pow(2).sum() for g in grads if g is not None)
    predictions = z.squeeze(1) if squeeze else z
    return LGMTerms(mse, _safe_sqrt(sq), predictions)


def gradient_matching_terms(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    regression: bool,
    gamma: float,
    generator: torch.Generator | None,
) -> LGMTerms:
    """(task loss, L_gm, outputs) of the head on features that stay in the backbone's graph."""
    if regression:
        return squared_error_lgm(head, features, targets, gamma=gamma, generator=generator)
    terms = lgm_penalty(head, features, targets, gamma=gamma, variant="lgm", generator=generator)
    return terms


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0, not NaN, where the argument is exactly 0 (γ = 0)."""
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))
