"""The Local Gradient Matching (LGM) loss of Sec. 4 (Eq. 3, 4, 6), usable in any PyTorch loop.

For a head g_θ on frozen features t with labels y, each step draws fresh δ ~ N(0, I) and

    t̂     = t + γ·δ                                                          (Eq. 3)
            (or t + γ·(s ⊙ δ) with a per-dimension scale s, e.g. the features' std: ``feature_scale``)
    L_gm  = ‖ mean_i ∇θ ℓ(g(t_i), y_i) − mean_i ∇θ ℓ(g(t̂_i), y_i) ‖₂        (Eq. 4, over all of θ)
    L     = CE + λ·L_gm                                                      (Eq. 6)

The gradient of L_gm flows through both gradient terms. Ways to compute it:

- autograd, for any `nn.Module` head: the difference of the two mean gradients is the gradient of
  the difference of the two mean losses, taken once with ``create_graph=True``; backward through its
  norm is then a Hessian-vector product (double backward).
- closed form, for linear heads z = W t + b with softmax cross-entropy: ∇W mean = Eᵀ T / B with
  E = softmax(Z) − Y, so the difference is a product of (2B × C) and (2B × d) matrices, written so
  that nothing of size O(γ) is obtained by cancelling two O(1) numbers:

      D_W = [P − P̂ ; −γ(P̂ − Y)]ᵀ [T ; Δ] / B,        D_b = (P − P̂)ᵀ 1 / B,

  with Z = T Wᵀ + b and Ẑ = Z + γ Δ Wᵀ. Differentiable in W, b (and t) by ordinary autograd; when the
  features need no gradient a fused `autograd.Function` with a hand-derived backward does the same
  in a few matrix products (`benchmarks/bench_lgm.py`).
- fused, for the paper's MLP head (`noisylm.probing.heads.MLPHead`): the same algebra one layer deeper
  (`_FusedMLPLGM`), in place of double backward.

Variants (Table 5 and baselines): ``lgm``; ``norm`` = ‖mean ∇θ ℓ(g(t), y)‖₂ only; ``cosine`` =
1 − cos(mean ∇θ ℓ(g(t)), mean ∇θ ℓ(g(t̂))); ``l2-output`` = mean_i ‖g(t_i) − g(t̂_i)‖₂ (the
conventional regulariser); ``none`` (plain CE). `LGMLoss` adds optional L2-SP anchoring
(α/2)‖θ − θ₀‖² for heads initialised from given weights (a head-only analogue of L2-SP; Table 4 proper,
which anchors the backbone, is `noisylm finetune`).

Usage, two lines in a plain loop::

    criterion = LGMLoss(head)                 # was: criterion = nn.CrossEntropyLoss()
    loss = criterion(features, labels)        # was: loss = criterion(head(features), labels)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.heads import MLPHead

VARIANTS = ("lgm", "norm", "cosine", "l2-output", "none")
METHODS = ("auto", "fused", "closed-form", "autograd")


class LGMTerms(NamedTuple):
    """The parts of one LGM step: mean CE on clean features, the variant's penalty, clean logits."""

    ce: torch.Tensor
    penalty: torch.Tensor
    logits: torch.Tensor


def lgm_penalty(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float = 0.01,
    variant: str = "lgm",
    method: str = "auto",
    generator: torch.Generator | None = None,
    feature_scale: torch.Tensor | None = None,
) -> LGMTerms:
    """Cross-entropy and the LGM penalty (or an ablation variant) of ``head`` on one batch.

    features: [B, d] float tensor; labels: [B] int64 class ids. ``method``: ``auto`` picks, for variant
    ``lgm`` on features that need no gradient, the fused hand-derived path of `nn.Linear` and
    `MLPHead` heads; else the autograd closed form for `nn.Linear` heads, and double backward for any
    other head; ``closed-form`` / ``fused`` / ``autograd`` force one (for tests and benchmarks).
    δ is drawn from ``generator``. ``feature_scale``: a [d] tensor s that scales δ per dimension,
    t̂ = t + γ·(s ⊙ δ) (so that one γ is the same relative perturbation on features of any scale);
    None = Eq. 3 as written (s = 1). The head must treat samples independently (no batch norm): the
    clean and perturbed batches go through it as one concatenated batch.
    """
    _check_args(features, labels, gamma, variant, method)
    if feature_scale is not None and tuple(feature_scale.shape) != (features.shape[1],):
        raise NoisyLMError(
            f"feature_scale has shape {tuple(feature_scale.shape)} but the features have "
            f"{features.shape[1]} dimensions; pass one scale per feature dimension"
        )
    if labels.dtype != torch.int64:
        labels = labels.long()
    in_features = getattr(head, "in_features", None)
    if in_features is not None and features.shape[1] != in_features:
        raise NoisyLMError(
            f"features have dimension {features.shape[1]} but the head expects {in_features}; "
            "use features from the backbone the head was built for"
        )
    is_linear = isinstance(head, nn.Linear)
    is_mlp = isinstance(head, MLPHead)
    if method == "closed-form" and not is_linear:
        raise UsageError(
            f"method='closed-form' needs an nn.Linear head; use method='autograd' for {type(head)}"
        )
    if method == "fused" and not (is_linear or is_mlp):
        raise UsageError(
            f"method='fused' needs an nn.Linear or MLPHead head; use 'autograd' for {type(head)}"
        )
    if method == "fused" and variant != "lgm":
        raise UsageError(
            "method='fused' implements variant 'lgm' only; use method='closed-form' or 'autograd'"
        )

    if variant == "none":
        logits = head(features)
        return LGMTerms(F.cross_entropy(logits, labels), logits.new_zeros(()), logits)
    # [T; Δ] in one buffer: Eq. 3's fresh δ ~ N(0, I) is drawn straight into its lower half.
    batch = features.shape[0]
    both = features.new_empty((2 * batch, features.shape[1]))
    both[batch:].normal_(generator=generator)
    if feature_scale is not None:
        # Every path below reads the perturbation from this block: scaling it here gives t̂ = t + γ(s ⊙ δ).
        both[batch:].mul_(feature_scale.to(both))
    fusable = (is_linear or is_mlp) and variant == "lgm" and not _needs_grad(features)
    if method == "fused" or (method == "auto" and fusable):
        both[:batch] = features
        if is_linear:
            ce, penalty, logits = _FusedLinearLGM.apply(head.weight, head.bias, both, labels, gamma)
        else:
            fc1, fc2 = head.fc1, head.fc2
            ce, penalty, logits = _FusedMLPLGM.apply(
                fc1.weight, fc1.bias, fc2.weight, fc2.bias, both, labels, gamma
            )
        return LGMTerms(ce, penalty, logits)
    if is_linear and method != "autograd":
        return _linear_closed_form(head.weight, head.bias, features, both[batch:], labels, gamma, variant)
    return _autograd_terms(head, features, both[batch:], labels, gamma, variant)


class LGMLoss(nn.Module):
    """CE + λ·penalty (+ L2-SP anchoring): a drop-in replacement for ``CrossEntropyLoss`` on a head.

    ``criterion = LGMLoss(head)``, then ``loss = criterion(features, labels)`` each step. The last
    step's parts are kept (detached) in ``last`` for logging: ``last.ce``, ``last.penalty``,
    ``last.logits``.

    gamma: std of the feature perturbation (Eq. 3). lam: weight λ of the penalty (Eq. 6).
    variant: one of VARIANTS. anchor_weight: α of the L2-SP term (α/2)‖θ − θ₀‖², θ₀ = the head's
    parameters when the loss is built (0 disables it). method: see `lgm_penalty`.
    generator: the torch.Generator that draws δ (None: the global RNG).
    feature_scale: a [d] tensor s, t̂ = t + γ·(s ⊙ δ) (e.g. the training features' per-dimension std,
    so that γ is a relative perturbation); None: t̂ = t + γ·δ (Eq. 3).
    """

    def __init__(
        self,
        head: nn.Module,
        gamma: float = 0.01,
        lam: float = 0.15,
        variant: str = "lgm",
        anchor_weight: float = 0.0,
        method: str = "auto",
        generator: torch.Generator | None = None,
        feature_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise UsageError(f"unknown LGM variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if method not in METHODS:
            raise UsageError(f"unknown LGM method {method!r}; choose one of {', '.join(METHODS)}")
        for name, value in (("gamma", gamma), ("lam", lam), ("anchor_weight", anchor_weight)):
            if not (value >= 0 and value < float("inf")):
                raise UsageError(f"{name} must be a finite number >= 0, got {value}")
        self.head = head
        self.gamma, self.lam, self.variant, self.method = float(gamma), float(lam), variant, method
        self.anchor_weight = float(anchor_weight)
        self.generator = generator
        if feature_scale is not None:
            feature_scale = torch.as_tensor(feature_scale).detach()
            if (
                feature_scale.dim() != 1
                or not torch.isfinite(feature_scale).all()
                or (feature_scale < 0).any()
            ):
                raise UsageError(
                    "feature_scale must be a 1-D tensor of finite numbers >= 0 (one per feature dimension)"
                )
        # A buffer, so that it moves with .to(device); None when δ is not scaled.
        self.register_buffer("feature_scale", feature_scale)
        self._last: LGMTerms | None = None
        # θ₀ for L2-SP: a snapshot, not a parameter (buffers move with .to(device)).
        self._anchor_names: list[str] = []
        if self.anchor_weight > 0:
            for i, (name, param) in enumerate(head.named_parameters()):
                self.register_buffer(f"anchor_{i}", param.detach().clone())
                self._anchor_names.append(name)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        terms = lgm_penalty(
            self.head,
            features,
            labels,
            gamma=self.gamma,
            variant=self.variant,
            method=self.method,
            generator=self.generator,
            feature_scale=self.feature_scale,
        )
        self.__dict__["_last"] = terms  # plain attribute: skips nn.Module.__setattr__ on every step
        loss = torch.add(terms.ce, terms.penalty, alpha=self.lam) if self.variant != "none" else terms.ce
        if self.anchor_weight > 0:
            loss = loss + 0.5 * self.anchor_weight * self.anchor_distance()
        return loss

    @property
    def last(self) -> LGMTerms | None:
        """The last step's ce, penalty and logits, detached (None before the first step)."""
        if self._last is None:
            return None
        return LGMTerms(*(t.detach() for t in self._last))

    def anchor_distance(self) -> torch.Tensor:
        """‖θ − θ₀‖² over the head's parameters (0 when anchoring is off)."""
        if not self._anchor_names:
            return torch.zeros(())
        params = dict(self.head.named_parameters())
        return sum(
            (params[name] - getattr(self, f"anchor_{i}")).pow(2).sum()
            for i, name in enumerate(self._anchor_names)
        )

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant}, gamma={self.gamma}, lam={self.lam}, "
            f"anchor_weight={self.anchor_weight}, method={self.method}, "
            f"feature_scale={'none' if self.feature_scale is None else 'per-dimension'}"
        )


# --------------------------------------------------------------------------------------------------
# Autograd path: any head.


def _autograd_terms(
    head: nn.Module,
    features: torch.Tensor,
    delta: torch.Tensor,
    labels: torch.Tensor,
    gamma: float,
    variant: str,
) -> LGMTerms:
    batch = features.shape[0]
    perturbed = features + gamma * delta
    logits_all = head(torch.cat([features, perturbed]))
    logits, logits_hat = logits_all[:batch], logits_all[batch:]
    ce = F.cross_entropy(logits, labels)
    if variant == "l2-output":
        return LGMTerms(ce, _safe_sqrt((logits - logits_hat).pow(2).sum(1)).mean(), logits)
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the head has no trainable parameters; LGM regularises the head's parameters")
    if variant == "lgm":
        # mean ∇ℓ(t) − mean ∇ℓ(t̂) = ∇(mean ℓ(t) − mean ℓ(t̂)): one gradient call, not two.
        diff = ce - F.cross_entropy(logits_hat, labels)
        grads = _grad(diff, params)
        return LGMTerms(ce, _safe_sqrt(_sum_sq(grads)), logits)
    grads = _grad(ce, params)
    if variant == "norm":
        return LGMTerms(ce, _safe_sqrt(_sum_sq(grads)), logits)
    grads_hat = _grad(F.cross_entropy(logits_hat, labels), params)
    dot = sum((g * h).sum() for g, h in zip(grads, grads_hat, strict=True))
    return LGMTerms(ce, 1 - _safe_cos(dot, _sum_sq(grads), _sum_sq(grads_hat)), logits)


def _grad(output: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(output, params, create_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


# --------------------------------------------------------------------------------------------------
# Closed form for linear heads (differentiable by autograd; all variants).


def _linear_closed_form(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    features: torch.Tensor,
    delta: torch.Tensor,
    labels: torch.Tensor,
    gamma: float,
    variant: str,
) -> LGMTerms:
    batch, num_classes = features.shape[0], weight.shape[0]
    both = torch.cat([features, delta])  # [T; Δ]
    products = both @ weight.T
    logits = products[:batch] if bias is None else products[:batch] + bias
    logits_hat = logits + gamma * products[batch:]  # g(t + γδ) = g(t) + γ W δ
    ce = F.cross_entropy(logits, labels)
    if variant == "l2-output":
        return LGMTerms(ce, _safe_sqrt((logits - logits_hat).pow(2).sum(1)).mean(), logits)
    onehot = F.one_hot(labels, num_classes).to(logits.dtype)
    probs, probs_hat = torch.softmax(logits, 1), torch.softmax(logits_hat, 1)
    if variant == "lgm":
        prob_diff = probs - probs_hat
        coeffs = torch.cat([prob_diff, -gamma * (probs_hat - onehot)])  # [P − P̂; −γ(P̂ − Y)]
        sq = _gram_or_direct_sq(coeffs, both) / batch**2
        if bias is not None:
            sq = sq + prob_diff.sum(0).pow(2).sum() / batch**2
        return LGMTerms(ce, _safe_sqrt(sq), logits)
    err = probs - onehot
    grad_w, grad_b = err.T @ features / batch, err.sum(0) / batch
    sq = grad_w.pow(2).sum() + (grad_b.pow(2).sum() if bias is not None else 0)
    if variant == "norm":
        return LGMTerms(ce, _safe_sqrt(sq), logits)
    err_hat = probs_hat - onehot  # cosine
    grad_w_hat = err_hat.T @ (features + gamma * delta) / batch
    grad_b_hat = err_hat.sum(0) / batch
    dot = (grad_w * grad_w_hat).sum()
    sq_hat = grad_w_hat.pow(2).sum()
    if bias is not None:
        dot, sq_hat = dot + (grad_b * grad_b_hat).sum(), sq_hat + grad_b_hat.pow(2).sum()
    return LGMTerms(ce, 1 - _safe_cos(dot, sq, sq_hat), logits)


def _gram_or_direct_sq(coeffs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """‖coeffsᵀ rows‖²_F alone (for the autograd closed form): `_difference_sq_and_adjoint` without
    the adjoint."""
    return _difference_sq_and_adjoint(coeffs, rows, adjoint=False)[0]


def _difference_sq_and_adjoint(
    coeffs: torch.Tensor, rows: torch.Tensor, adjoint: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For the raw gradient difference D = coeffsᵀ rows ([k × d], never needed itself): ‖D‖²_F and
    (``adjoint``) rows Dᵀ ([n × k], what the backward multiplies by), by whichever costs fewer
    multiply-adds: the direct products (n·k·d each), or the Gram matrix G = rows rowsᵀ
    (n²·(d + k)), with rows Dᵀ = G coeffs and ‖D‖² = ⟨coeffs, G coeffs⟩. The Gram route wins when
    the head's layer is wider than the stacked batch: the MLP's first layer (k = d), or a linear head
    with C > 2B classes."""
    n, k = coeffs.shape
    dim = rows.shape[1]
    if n * (dim + k) < (2 if adjoint else 1) * k * dim:
        rows_dt = torch.mm(torch.mm(rows, rows.t()), coeffs)
        return torch.mul(coeffs, rows_dt).sum().clamp_min(0), rows_dt  # rounding can dip below 0
    raw = torch.mm(coeffs.t(), rows)
    return raw.square().sum(), _times_transposed(rows, raw) if adjoint else None


class _FusedLinearLGM(torch.autograd.Function):
    """CE and L_gm of a linear head with a hand-derived backward (features get no gradient).

    Takes X = [T; Δ] stacked. Forward as `_linear_closed_form`. Backward, with U = (D_W, D_b)/L_gm:
      ∂L/∂M = X U_Wᵀ / B (+ U_bᵀ/B on the top half) =: H, M = [P − P̂; −γ(P̂ − Y)],
      ∂L/∂P = H_top, ∂L/∂P̂ = −H_top − γ H_bot, softmax'ᵀ(p, g) = p ⊙ (g − ⟨p, g⟩),
      ∂/∂Z = g_ce (P − Y)/B + g_pen (sm(P, H_top) + sm(P̂, ∂L/∂P̂)), ∂/∂(ΔWᵀ) = g_pen γ sm(P̂, ∂L/∂P̂),
      ∂W = [∂Z; ∂(ΔWᵀ)]ᵀ X, ∂b = ∂Z ᵀ 1.
    """

    @staticmethod
    def forward(ctx, weight, bias, both, labels, gamma):
        # Few, large ops: at probe sizes the step is bound by per-op overhead, not by FLOPs.
        batch = both.shape[0] // 2
        products = _times_transposed(both, weight)
        logits = products[:batch] if bias is None else products[:batch] + bias
        logits_hat = torch.add(logits, products[batch:], alpha=gamma)
        log_probs = torch.log_softmax(logits, 1)
        probs, probs_hat = log_probs.exp(), torch.softmax(logits_hat, 1)
        ce = F.nll_loss(log_probs, labels)
        onehot = torch.zeros_like(probs).scatter_(1, labels[:, None], 1.0)
        prob_diff = probs - probs_hat
        coeffs = torch.cat([prob_diff, (onehot - probs_hat).mul_(gamma)])
        sq_w, both_dt = _difference_sq_and_adjoint(coeffs, both)  # ‖B·D_W‖², X (B·D_W)ᵀ
        raw_b = prob_diff.sum(0) if bias is not None else None  # B·D_b
        raw_norm = (sq_w if raw_b is None else sq_w + raw_b.square().sum()).sqrt()
        ctx.save_for_backward(both, probs, probs_hat, onehot, both_dt, raw_b, raw_norm)
        ctx.gamma = gamma
        ctx.mark_non_differentiable(logits)
        return ce, raw_norm / batch, logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce, grad_pen, _grad_logits):
        both, probs, probs_hat, onehot, both_dt, raw_b, raw_norm = ctx.saved_tensors
        gamma, batch = ctx.gamma, probs.shape[0]
        # U/B = raw/(‖raw‖·B); where ‖raw‖ = 0 (γ = 0) raw is 0 too, so the clamp gives U = 0, not NaN.
        scale = grad_pen / (raw_norm.clamp_min(1e-30) * batch)
        h = both_dt * scale  # X U_Wᵀ, [2B, C]
        h_top, h_bot = h[:batch], h[batch:]
        if raw_b is not None:
            h_top = h_top + raw_b * scale
        g_hat = torch.add(h_top, h_bot, alpha=gamma).neg_()
        sm = probs * (h_top - (probs * h_top).sum(1, keepdim=True))
        sm_hat = probs_hat * (g_hat - (probs_hat * g_hat).sum(1, keepdim=True))
        grad_logits = (probs - onehot).mul_(grad_ce / batch).add_(sm).add_(sm_hat)
        grad_weight = torch.mm(torch.cat([grad_logits, sm_hat.mul_(gamma)]).t(), both)
        grad_bias = grad_logits.sum(0) if raw_b is not None else None
        return grad_weight, grad_bias, None, None, None


class _FusedMLPLGM(torch.autograd.Function):
    """CE and L_gm of `MLPHead` (z = W2 relu(W1 t + b1) + b2) with a hand-derived backward.

    Forward, with X = [T; Δ], A = X W1ᵀ, a = [A_top + b1; A_top + b1 + γ A_bot] (the first layer is
    linear, so t̂ = t + γδ needs no second pass), m = a > 0, H = relu(a), P = softmax(H W2ᵀ + b2),
    E = P − Y, signs s = [+1; −1], S = (E W2) ⊙ m (the per-sample signal at fc1's output):

      B·D_W2 = (sE)ᵀ H,  B·D_b2 = (sE)ᵀ 1,  B·D_W1 = [S_c − S_p; −γ S_p]ᵀ X,  B·D_b1 = (S_c − S_p)ᵀ 1.

    Backward: reverse mode through these expressions (the ReLU mask is piecewise constant, as in
    autograd's double backward); `tests/test_lgm.py` checks it against autograd and finite differences.
    """

    @staticmethod
    def forward(ctx, w1, b1, w2, b2, both, labels, gamma):
        batch = both.shape[0] // 2
        pre = torch.mm(both, w1.t())
        pre_c = pre[:batch] + b1
        act_in = torch.cat([pre_c, torch.add(pre_c, pre[batch:], alpha=gamma)])
        mask = act_in > 0
        hidden = act_in.clamp_min(0)
        logits_all = torch.addmm(b2, hidden, w2.t())
        log_probs = torch.log_softmax(logits_all[:batch], 1)
        ce = F.nll_loss(log_probs, labels)
        probs = torch.cat([log_probs.exp(), torch.softmax(logits_all[batch:], 1)])
        onehot = torch.zeros_like(log_probs).scatter_(1, labels[:, None], 1.0)
        err = probs - onehot.repeat(2, 1)  # E
        signed = torch.cat([err[:batch], -err[batch:]])  # sE
        signal = torch.mm(err, w2) * mask  # S
        signal_diff = signal[:batch] - signal[batch:]
        raw_w2, raw_b2 = torch.mm(signed.t(), hidden), signed.sum(0)
        # B·D_W1 = [S_c − S_p; −γ S_p]ᵀ X is h × d: only its norm and X (B·D_W1)ᵀ are needed.
        sq_w1, both_dt = _difference_sq_and_adjoint(torch.cat([signal_diff, signal[batch:] * -gamma]), both)
        raw_b1 = signal_diff.sum(0)
        raw_norm = (sq_w1 + raw_b1.square().sum() + raw_w2.square().sum() + raw_b2.square().sum()).sqrt()
        ctx.save_for_backward(
            w2, both, mask, hidden, probs, onehot, err, signed, both_dt, raw_b1, raw_w2, raw_b2, raw_norm
        )
        ctx.gamma = gamma
        logits = logits_all[:batch]
        ctx.mark_non_differentiable(logits)
        return ce, raw_norm / batch, logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce, grad_pen, _grad_logits):
        w2, both, mask, hidden, probs, onehot, err, signed, both_dt, raw_b1, raw_w2, raw_b2, raw_norm = (
            ctx.saved_tensors
        )
        gamma, batch = ctx.gamma, onehot.shape[0]
        scale = grad_pen / (raw_norm.clamp_min(1e-30) * batch)  # raw = 0 where the norm is 0: no NaN
        # Adjoint of S through B·D_W1 and B·D_b1.
        q = both_dt * scale
        q_top = q[:batch] + raw_b1 * scale
        v = torch.cat([q_top, torch.add(q_top, q[batch:], alpha=gamma).neg_()]) * mask  # adjoint of E W2
        grad_err = torch.mm(v, w2.t())
        grad_w2 = torch.mm(err.t(), v)
        # Through B·D_W2 = (sE)ᵀ H and B·D_b2 = (sE)ᵀ 1.
        r2 = torch.addmm(raw_b2 * scale, hidden, (raw_w2 * scale).t())
        grad_err[:batch] += r2[:batch]
        grad_err[batch:] -= r2[batch:]
        grad_hidden = torch.mm(signed, raw_w2 * scale)
        # Softmax, plus the cross-entropy on the clean half.
        grad_logits = probs * (grad_err - (probs * grad_err).sum(1, keepdim=True))
        grad_logits[:batch] += (probs[:batch] - onehot) * (grad_ce / batch)
        grad_hidden += torch.mm(grad_logits, w2)
        grad_w2 += torch.mm(grad_logits.t(), hidden)
        grad_b2 = grad_logits.sum(0)
        grad_act = grad_hidden * mask
        grad_pre_c = grad_act[:batch] + grad_act[batch:]  # a_p = a_c + γ Δ W1ᵀ
        grad_w1 = torch.mm(torch.cat([grad_pre_c, grad_act[batch:] * gamma]).t(), both)
        return grad_w1, grad_pre_c.sum(0), grad_w2, grad_b2, None, None, None


# --------------------------------------------------------------------------------------------------
# Helpers.


def _times_transposed(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows @ weightᵀ. With few output columns (≤ 8 classes) the BLAS is 2–5x faster on the
    transposed problem (weight @ rowsᵀ)ᵀ (measured on the CPU of `BENCHMARKS.md`); same numbers."""
    if weight.shape[0] <= 8:
        return torch.mm(weight, rows.t()).t()
    return torch.mm(rows, weight.t())


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not NaN) where the argument is exactly 0, e.g. L_gm at γ = 0."""
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _safe_cos(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor) -> torch.Tensor:
    denom = _safe_sqrt(sq_a * sq_b)
    return torch.where(denom > 0, dot / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.ones_like(dot))


def _sum_sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    return sum(t.pow(2).sum() for t in tensors)


def _needs_grad(features: torch.Tensor) -> bool:
    return features.requires_grad and torch.is_grad_enabled()


def _check_args(
    features: torch.Tensor, labels: torch.Tensor, gamma: float, variant: str, method: str
) -> None:
    if variant not in VARIANTS:
        raise UsageError(f"unknown LGM variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if method not in METHODS:
        raise UsageError(f"unknown LGM method {method!r}; choose one of {', '.join(METHODS)}")
    if not (gamma >= 0 and gamma < float("inf")):
        raise UsageError(f"gamma must be a finite number >= 0, got {gamma}")
    if features.dim() != 2:
        raise NoisyLMError(f"features must be a 2-D [B, d] tensor, got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise NoisyLMError(
            f"labels must be a 1-D tensor with one label per feature row, got shape {tuple(labels.shape)} "
            f"for {features.shape[0]} rows"
        )
    if features.shape[0] == 0:
        raise NoisyLMError("empty batch: features have 0 rows")
    if labels.dtype not in (torch.int64, torch.int32):
        raise NoisyLMError(f"labels must be integer class ids (int64), got {labels.dtype}")
