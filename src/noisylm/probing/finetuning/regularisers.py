"""The fine-tuning regularisers of the paper's Table 4: L2-SP, SMART, LNSR (and none).

Each is a small class: ``attach(model, total_steps)`` before training (snapshots it needs),
``penalty(step)`` each step (a scalar added to the task loss; its gradient flows by autograd) and
``after_step(model)`` after each optimiser update. `make_regulariser(name, weight, **settings)` builds
one by name; ``weight`` is the weight the protocol searches (α, λ_s, λ).

Extra forward passes (SMART's perturbed and teacher passes, LNSR's noisy pass) replay the random
state of the step's clean pass, so they draw the same dropout masks: a penalty then measures what the
perturbation (or the change of weights) does, not the difference of two dropout draws. Their own
noise (SMART's ν, LNSR's ε) comes from a separate seeded generator.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from noisylm.errors import UsageError
from noisylm.probing.finetuning.model import FinetuneModel, encoder_layers

REGULARISERS = ("none", "l2-sp", "smart", "lnsr")
REGULARISER_LABELS = {"none": "none", "l2-sp": "L2-SP", "smart": "SMART", "lnsr": "LNSR"}


@dataclass
class RngState:
    """The random state before a step's clean forward pass (CPU, and the CUDA device when used)."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside: the random state of the clean pass again; after: the caller's state, untouched."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class StepState:
    """What a regulariser sees of one training step's clean pass.

    embeds: the word embeddings fed to the encoder [B, T, d] (part of the graph);
    outputs: clean logits [B, C] or scores [B] (part of the graph); hidden_states: every layer's
    output when the regulariser asked for them; rng: the random state before the clean pass.
    """

    model: FinetuneModel
    batch: dict[str, torch.Tensor]
    embeds: torch.Tensor
    outputs: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    rng: RngState
    step: int


class Regulariser:
    """No regularisation: plain fine-tuning."""

    name = "none"
    needs_hidden_states = False

    def attach(self, model: FinetuneModel, total_steps: int) -> None:
        """Called once before training."""

    def penalty(self, step: StepState) -> torch.Tensor:
        return step.outputs.new_zeros(())

    def after_step(self, model: FinetuneModel, step: int) -> None:
        """Called after each optimiser update."""

    def settings(self) -> dict[str, Any]:
        return {}


class L2SP(Regulariser):
    """L2-SP (Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with
    Convolutional Networks", ICML 2018): the pre-trained weights w⁰ are the reference, not 0,

        Ω(w) = (α/2) ‖w_S − w⁰_S‖²₂ + (β/2) ‖w_S̄‖²₂

    over the backbone's weights w_S (every encoder parameter, anchored at its pre-trained value) and
    the new layer's weights w_S̄ (the head: weight and bias, decayed towards 0).
    """

    name = "l2-sp"

    def __init__(self, alpha: float, beta: float = 0.0) -> None:
        self.alpha, self.beta = float(alpha), float(beta)
        self._anchors: list[tuple[nn.Parameter, torch.Tensor]] = []

    def attach(self, model: FinetuneModel, total_steps: int) -> None:
        self._anchors = [(p, p.detach().clone()) for p in model.encoder.parameters()]
        self._head = list(model.head.parameters())

    def penalty(self, step: StepState) -> torch.Tensor:
        anchored = sum((p - p0).pow(2).sum() for p, p0 in self._anchors)
        decayed = sum(p.pow(2).sum() for p in self._head)
        return 0.5 * self.alpha * anchored + 0.5 * self.beta * decayed

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (divergences of close outputs), else unchanged (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(P‖Q) + KL(Q‖P) = Σ_c (p_c − q_c)(log p_c − log q_c) between softmaxes."""
    log_p, log_q = F.log_softmax(_wide(logits_p), -1), F.log_softmax(_wide(logits_q), -1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1).mean()


def smart_divergence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SMART's ℓ_s: symmetric KL for logits [B, C]; squared error (batch mean) for scores [B]."""
    if a.dim() == 1:
        return (_wide(a) - _wide(b)).pow(2).mean()
    return symmetric_kl(a, b)


class SMART(Regulariser):
    """SMART (Jiang, He, Chen, Liu, Gao and Zhao, "SMART: Robust and Efficient Fine-Tuning for
    Pre-trained Natural Language Models through Principled Regularized Optimization", ACL 2020).

    Smoothness-inducing adversarial regulariser on the input embeddings x (here the word embeddings the
    encoder takes as ``inputs_embeds``, the generic hook of Hugging Face encoders):

        R_s(θ) = (1/B) Σ_i max_{‖x̃_i − x_i‖_∞ ≤ ε} ℓ_s(f(x̃_i; θ), f(x_i; θ)),

    ℓ_s = symmetric KL (classification) or squared error (regression), approximated as in their
    Algorithm 1 with T_x̃ = 1 projected ascent step from a random start:

        x̃_i = x_i + ν_i, ν_i ~ N(0, σ²I);   g_i = ∇_x̃ ℓ_s(f(x̃_i; θ), f(x_i; θ))  (θ fixed)
        x̃_i ← x_i + Π_{‖·‖_∞ ≤ ε}(x̃_i − x_i + η g_i / ‖g_i‖_∞),

    then R_s's gradient with x̃ − x held fixed. Bregman proximal point with momentum (their
    Eq. 3 and Algorithm 1, S = 1): a teacher θ̃ that follows θ by an exponential moving average,

        D(θ, θ̃) = (1/B) Σ_i ℓ_s(f(x_i; θ), f(x_i; θ̃)),    θ̃ ← (1 − β) θ + β θ̃ after each update,

    with β = 0.99 for the first 10% of updates and 0.999 after (their setting). The penalty is
    λ_s R_s + μ D. Their defaults: ε = σ = 1e-5, η = 1e-3, μ = 1, λ_s ∈ {1, 3, 5}.
    """

    name = "smart"

    def __init__(
        self,
        lam: float,
        *,
        epsilon: float = 1e-5,
        step_size: float = 1e-3,
        sigma: float = 1e-5,
        mu: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.lam, self.epsilon, self.step_size = float(lam), float(epsilon), float(step_size)
        self.sigma, self.mu, self.generator = float(sigma), float(mu), generator
        self.teacher: FinetuneModel | None = None
        self._warm_steps = 0

    def attach(self, model: FinetuneModel, total_steps: int) -> None:
        if self.mu > 0:
            self.teacher = copy.deepcopy(model)
            self.teacher.requires_grad_(False)
        self._warm_steps = max(1, int(0.1 * total_steps))

    def perturbation(
        self, forward: Callable[[torch.Tensor], torch.Tensor], embeds: torch.Tensor, clean: torch.Tensor
    ) -> torch.Tensor:
        """x̃ − x of one ascent step (detached), from x = ``embeds``; ``forward`` maps embeddings to
        outputs, ``clean`` = f(x). The random start ν is drawn from the regulariser's generator."""
        x = embeds.detach()
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) * self.sigma
        start = (x + noise).requires_grad_(True)
        with torch.enable_grad():
            divergence = smart_divergence(forward(start), clean.detach())
            (grad,) = torch.autograd.grad(divergence, start)
        # ‖g_i‖_∞ per example, over all of its tokens and dimensions; g = 0 leaves the random start.
        scale = grad.abs().flatten(1).amax(1).clamp_min(torch.finfo(grad.dtype).tiny)
        step = grad / scale.view(-1, *([1] * (grad.dim() - 1)))
        return (noise + self.step_size * step).clamp(-self.epsilon, self.epsilon).detach()

    def penalty(self, step: StepState) -> torch.Tensor:
        delta = None
        if self.lam > 0:
            delta = self.perturbation(self._forward(step), step.embeds, step.outputs)
        return self.penalty_at(step, delta)

    def penalty_at(self, step: StepState, delta: torch.Tensor | None) -> torch.Tensor:
        """λ_s ℓ_s(f(x + δ), f(x)) + μ D(θ, θ̃) with the perturbation δ = x̃ − x held fixed."""
        total = _wide(step.outputs).new_zeros(())
        if self.lam > 0 and delta is not None:
            perturbed = self._forward(step)(step.embeds + delta)
            total = total + self.lam * smart_divergence(perturbed, step.outputs)
        if self.teacher is not None:
            with torch.no_grad(), step.rng.replayed():
                self.teacher.train(step.model.training)
                teacher_outputs = self.teacher(step.batch)
            total = total + self.mu * smart_divergence(step.outputs, teacher_outputs)
        return total

    @staticmethod
    def _forward(step: StepState) -> Callable[[torch.Tensor], torch.Tensor]:
        """f(·; θ) on embeddings, with the clean pass's dropout masks."""

        def forward(embeds: torch.Tensor) -> torch.Tensor:
            with step.rng.replayed():
                return step.model(step.batch, embeds)

        return forward

    def after_step(self, model: FinetuneModel, step: int) -> None:
        if self.teacher is None:
            return
        beta = 0.99 if step < self._warm_steps else 0.999
        with torch.no_grad():
            teacher = list(self.teacher.parameters())
            torch._foreach_mul_(teacher, beta)
            torch._foreach_add_(teacher, [p.detach() for p in model.parameters()], alpha=1 - beta)

    def settings(self) -> dict[str, Any]:
        return {
            "lambda_s": self.lam,
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "sigma": self.sigma,
            "mu": self.mu,
        }


class LNSR(Regulariser):
    """LNSR, layerwise noise stability regularisation (Hua, Zhang, Zhang, Yang, Huang and Jin, "Noise
    Stability Regularization for Improving BERT Fine-tuning", NAACL 2021).

    Gaussian noise ε ~ N(0, σ²I) is added to the hidden representation that enters encoder layer r
    (r = 0: the embedding output), and the representations of every layer after it are asked to stay
    where they were:

        R(θ) = (1/B) Σ_i Σ_{j=r+1}^{L} (1/T_i) Σ_t ‖h̃_{j,i,t} − h_{j,i,t}‖²₂,

    h_j = output of layer j (hidden state j of the clean pass), h̃_j the same with ε injected, averaged
    over the T_i real (unpadded) tokens of example i; the penalty is λ R, with gradient through both
    passes. The noisy pass is a second forward pass with a forward pre-hook on layer r.
    """

    name = "lnsr"
    needs_hidden_states = True

    def __init__(
        self, lam: float, *, sigma: float = 0.01, layer: int = 0, generator: torch.Generator | None = None
    ) -> None:
        if layer < 0:
            raise UsageError(f"LNSR's layer must be >= 0, got {layer}")
        self.lam, self.sigma, self.layer, self.generator = float(lam), float(sigma), int(layer), generator

    def attach(self, model: FinetuneModel, total_steps: int) -> None:
        layers = encoder_layers(model.encoder)
        if self.layer >= len(layers):
            raise UsageError(
                f"LNSR's layer {self.layer} does not exist: the encoder has layers 0..{len(layers) - 1}"
            )

    def noisy_hidden_states(self, step: StepState) -> tuple[torch.Tensor, ...]:
        """Every layer's output with ε injected at the input of layer r (same dropout as the clean pass)."""
        layer = encoder_layers(step.model.encoder)[self.layer]

        def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = args[0] if args else kwargs["hidden_states"]
            noise = torch.randn(
                hidden.shape, generator=self.generator, device=hidden.device, dtype=hidden.dtype
            )
            noisy = hidden + self.sigma * noise
            return ((noisy, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": noisy})

        handle = layer.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            with step.rng.replayed():
                _, hidden_states = step.model.features(step.batch, step.embeds, output_hidden_states=True)
        finally:
            handle.remove()
        assert hidden_states is not None
        return hidden_states

    def penalty(self, step: StepState) -> torch.Tensor:
        if self.lam == 0:
            return step.outputs.new_zeros(())
        assert step.hidden_states is not None, "LNSR needs the clean pass's hidden states"
        noisy = self.noisy_hidden_states(step)
        mask = step.batch["attention_mask"].to(_wide(step.outputs).dtype)
        lengths = mask.sum(1).clamp_min(1.0)
        total = mask.new_zeros(())
        for clean_j, noisy_j in zip(
            step.hidden_states[self.layer + 1 :], noisy[self.layer + 1 :], strict=True
        ):
            per_token = (_wide(noisy_j) - _wide(clean_j)).pow(2).sum(-1)  # [B, T]
            total = total + ((per_token * mask).sum(1) / lengths).mean()
        return self.lam * total

    def settings(self) -> dict[str, Any]:
        return {"lambda": self.lam, "sigma": self.sigma, "layer": self.layer}


def make_regulariser(
    name: str, weight: float | None = None, *, generator: torch.Generator | None = None, **settings: Any
) -> Regulariser:
    """A regulariser by name; ``weight``: α (l2-sp), λ_s (smart) or λ (lnsr); ``settings``: the
    others (l2-sp: beta; smart: epsilon, step_size, sigma, mu; lnsr: sigma, layer)."""
    if name not in REGULARISERS:
        raise UsageError(f"unknown regulariser {name!r}; choose from {', '.join(REGULARISERS)}")
    if name == "none":
        return Regulariser()
    if weight is None or not (0 <= weight < float("inf")):
        raise UsageError(f"the weight of {name} must be a finite number >= 0, got {weight}")
    if name == "l2-sp":
        return L2SP(weight, **settings)
    if name == "smart":
        return SMART(weight, generator=generator, **settings)
    return LNSR(weight, generator=generator, **settings)
