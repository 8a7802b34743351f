"""The fine-tuning regularisers and L_gm on tiny real models (a 3-layer BERT of width 8, float64),
each against an independent computation, and their autograd gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from noisylm.errors import UsageError
from noisylm.probing.finetuning.gradient_matching import gradient_matching_terms, squared_error_lgm
from noisylm.probing.finetuning.model import FinetuneModel
from noisylm.probing.finetuning.regularisers import (
    L2SP,
    LNSR,
    SMART,
    RngState,
    StepState,
    make_regulariser,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


def tiny_model(num_outputs: int = 3, dropout: float = 0.0, seed: int = 0) -> FinetuneModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    encoder = BertModel(config, add_pooling_layer=False)
    model = FinetuneModel(encoder, "mean", num_outputs, dropout).double()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        model.head.bias.normal_(0, 0.1)
    return model.eval() if dropout == 0 else model.train()


def tiny_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 7, 11, 5, 3], [2, 9, 4, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])  # the second example is padded
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def step_state(model: FinetuneModel, batch, hidden: bool = True) -> StepState:
    rng = RngState.capture(torch.device("cpu"))
    embeds = model.embed(batch)
    features, hidden_states = model.features(batch, embeds, output_hidden_states=hidden)
    return StepState(model, batch, embeds, model.head_outputs(features), hidden_states, rng, 0)


def probe_coordinates(model: FinetuneModel) -> list[tuple[torch.nn.Parameter, tuple[int, ...]]]:
    """A few weights in the head, an attention layer, a LayerNorm and the word embeddings."""
    enc = model.encoder
    return [
        (model.head.weight, (0, 2)),
        (model.head.bias, (0,)),
        (enc.encoder.layer[0].attention.self.query.weight, (3, 1)),
        (enc.encoder.layer[2].output.dense.weight, (0, 5)),
        (enc.encoder.layer[1].attention.output.LayerNorm.weight, (4,)),
        (enc.embeddings.word_embeddings.weight, (7, 2)),
    ]


def assert_gradient_matches_finite_differences(model: FinetuneModel, loss_fn, h: float = 1e-4) -> None:
    """Autograd's gradient of ``loss_fn()`` at a few weights == central differences (float64)."""
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    for param, index in probe_coordinates(model):
        analytic = 0.0 if param.grad is None else param.grad[index].item()
        with torch.no_grad():
            original = param[index].item()
            param[index] = original + h
            up = loss_fn().item()
            param[index] = original - h
            down = loss_fn().item()
            param[index] = original
        numeric = (up - down) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10), (param.shape, index)


# --------------------------------------------------------------------------------------------------
# L2-SP


def test_l2sp_penalty_and_gradient_by_hand():
    model = tiny_model()
    reg = L2SP(alpha=0.3, beta=0.2)
    reg.attach(model, total_steps=10)
    pretrained = {name: p.detach().numpy().copy() for name, p in model.encoder.named_parameters()}
    with torch.no_grad():  # fine-tuning moved the weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    by_hand = 0.0
    for name, p in model.encoder.named_parameters():
        by_hand += 0.3 / 2 * float(np.sum((p.detach().numpy() - pretrained[name]) ** 2))
    for p in model.head.parameters():
        by_hand += 0.2 / 2 * float(np.sum(p.detach().numpy() ** 2))
    state = step_state(model, tiny_batch(), hidden=False)
    assert reg.penalty(state).item() == pytest.approx(by_hand, rel=1e-12)
    # ∇ = α (w − w⁰) on the encoder, β w on the head.
    model.zero_grad()
    reg.penalty(state).backward()
    for name, p in model.encoder.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), 0.3 * (p.detach().numpy() - pretrained[name]), atol=1e-12)
    np.testing.assert_allclose(model.head.weight.grad.numpy(), 0.2 * model.head.weight.detach().numpy())
    assert_gradient_matches_finite_differences(
        model, lambda: reg.penalty(step_state(model, tiny_batch(), False))
    )


# --------------------------------------------------------------------------------------------------
# SMART


def reference_divergence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ℓ_s written independently: KL(P‖Q) + KL(Q‖P) by torch's kl_div, or the squared error."""
    if a.dim() == 1:
        return F.mse_loss(a, b)
    log_p, log_q = F.log_softmax(a, -1), F.log_softmax(b, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") + F.kl_div(
        log_p, log_q, log_target=True, reduction="batchmean"
    )


@pytest.mark.parametrize("num_outputs", [3, 1], ids=["symmetric-kl", "squared-error"])
def test_smart_direction_is_the_finite_difference_ascent_direction(num_outputs):
    model, batch = tiny_model(num_outputs), tiny_batch()
    embeds = model.embed(batch).detach()
    clean = model(batch, embeds).detach()
    sigma, eta = 1e-3, 0.05
    # ε large enough that nothing is clipped: the step itself is compared.
    smart = SMART(
        1.0, epsilon=10.0, step_size=eta, sigma=sigma, mu=0.0, generator=torch.Generator().manual_seed(7)
    )
    delta = smart.perturbation(lambda e: model(batch, e), embeds, clean)

    start = embeds + sigma * torch.randn(
        embeds.shape, generator=torch.Generator().manual_seed(7), dtype=embeds.dtype
    )

    def divergence(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(reference_divergence(model(batch, x), clean))

    grad = torch.zeros_like(start)
    h = 1e-6
    for index in np.ndindex(*start.shape):
        up, down = start.clone(), start.clone()
        up[index] += h
        down[index] -= h
        grad[index] = (divergence(up) - divergence(down)) / (2 * h)
    expected = (start - embeds) + eta * grad / grad.abs().flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-9)
    assert grad[1, 4].abs().max() == 0  # the padding token does not move the outputs
    # Ascent: the divergence grows more along δ than along a random direction of the same ℓ∞ size.
    random_dir = torch.randn(delta.shape, generator=torch.Generator().manual_seed(1), dtype=delta.dtype)
    random_dir = (
        random_dir
        / random_dir.abs().flatten(1).amax(1).view(-1, 1, 1)
        * delta.abs().flatten(1).amax(1).view(-1, 1, 1)
    )
    assert divergence(embeds + delta) > 10 * divergence(embeds + random_dir)

    # With the paper's tiny ε, the perturbation is projected onto the ℓ∞ ball around x.
    small = SMART(
        1.0, epsilon=1e-5, step_size=1e-3, sigma=1e-5, mu=0.0, generator=torch.Generator().manual_seed(7)
    )
    clipped = small.perturbation(lambda e: model(batch, e), embeds, clean)
    unclipped_start = 1e-5 * torch.randn(
        embeds.shape, generator=torch.Generator().manual_seed(7), dtype=embeds.dtype
    )
    assert clipped.abs().max() <= 1e-5
    moved = grad.abs() > 0
    np.testing.assert_array_equal(  # where the gradient is large, x̃ sits on the ball's face in its direction
        torch.sign(clipped[grad.abs() > 0.5 * grad.abs().amax()]).numpy(),
        torch.sign(grad[grad.abs() > 0.5 * grad.abs().amax()]).numpy(),
    )
    torch.testing.assert_close(clipped[~moved], unclipped_start[~moved].clamp(-1e-5, 1e-5))


@pytest.mark.parametrize("num_outputs", [3, 1], ids=["classification", "regression"])
def test_smart_penalty_value_and_gradient(num_outputs):
    model, batch = tiny_model(num_outputs), tiny_batch()
    smart = SMART(
        2.0, epsilon=0.05, step_size=0.05, sigma=0.01, mu=0.7, generator=torch.Generator().manual_seed(3)
    )
    smart.attach(model, total_steps=100)
    with torch.no_grad():  # the student has moved away from its teacher
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = step_state(model, batch, hidden=False)
    delta = smart.perturbation(SMART._forward(state), state.embeds, state.outputs)
    with torch.no_grad():
        expected = 2.0 * reference_divergence(model(batch, state.embeds + delta), state.outputs) + 0.7 * (
            reference_divergence(state.outputs, smart.teacher(batch))
        )
    assert smart.penalty_at(state, delta).item() == pytest.approx(float(expected), rel=1e-10)
    assert float(expected) > 0
    # The gradient with x̃ − x held fixed (the algorithm's), through R_s and the Bregman term.
    assert_gradient_matches_finite_differences(
        model, lambda: smart.penalty_at(step_state(model, batch, False), delta)
    )


def test_smart_teacher_is_a_momentum_average():
    model = tiny_model()
    smart = SMART(1.0, generator=torch.Generator().manual_seed(0))
    smart.attach(model, total_steps=20)  # β = 0.99 for the first 2 updates, 0.999 after
    teacher = [p.detach().clone() for p in model.parameters()]
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        smart.after_step(model, step)
        beta = 0.99 if step < 2 else 0.999
        teacher = [
            beta * t + (1 - beta) * p.detach() for t, p in zip(teacher, model.parameters(), strict=True)
        ]
    for expected, got in zip(teacher, smart.teacher.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# LNSR


@pytest.mark.parametrize("layer", [0, 1])
def test_lnsr_penalty_is_a_second_forward_pass_with_the_same_noise(layer):
    model, batch = tiny_model(), tiny_batch()
    sigma, seed = 0.05, 11
    lnsr = LNSR(0.5, sigma=sigma, layer=layer, generator=torch.Generator().manual_seed(seed))
    lnsr.attach(model, total_steps=1)
    state = step_state(model, batch)
    penalty = lnsr.penalty(state)

    # Reference: the same ε added by a hook on the *output* of the module before layer r.
    before = model.encoder.embeddings if layer == 0 else model.encoder.encoder.layer[layer - 1]

    def add_noise(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        noise = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(seed), dtype=hidden.dtype)
        noisy = hidden + sigma * noise
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    handle = before.register_forward_hook(add_noise)
    try:
        noisy = model.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states
    finally:
        handle.remove()
    clean = model.encoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states
    mask = batch["attention_mask"].double()
    expected = 0.0
    for j in range(layer + 1, len(clean)):  # outputs of layers r .. L-1
        per_token = ((noisy[j] - clean[j]) ** 2).sum(-1)
        expected += ((per_token * mask).sum(1) / mask.sum(1)).mean().item()
    assert penalty.item() == pytest.approx(0.5 * expected, rel=1e-10)
    assert expected > 0

    def fresh_penalty():
        lnsr.generator.manual_seed(seed)  # the same ε at every evaluation
        return lnsr.penalty(step_state(model, batch))

    assert_gradient_matches_finite_differences(model, fresh_penalty)


def test_extra_passes_replay_the_dropout_masks():
    """With dropout on, a zero perturbation changes nothing: the extra passes draw the clean pass's
    dropout masks (and the caller's random stream goes on as if they had not run)."""
    model, batch = tiny_model(dropout=0.3), tiny_batch()
    state = step_state(model, batch)
    after_clean = torch.get_rng_state()
    lnsr = LNSR(1.0, sigma=0.0, generator=torch.Generator().manual_seed(0))
    assert lnsr.penalty(state).item() == 0.0
    smart = SMART(1.0, epsilon=0.0, sigma=0.0, mu=1.0, generator=torch.Generator().manual_seed(0))
    smart.attach(model, total_steps=10)  # teacher = student
    assert smart.penalty(state).item() == pytest.approx(0.0, abs=1e-15)
    assert torch.equal(torch.get_rng_state(), after_clean)
    # ... whereas two plain passes differ by their dropout masks.
    assert not torch.equal(model(batch), model(batch))


# --------------------------------------------------------------------------------------------------
# L_gm while the backbone trains


def eq4_by_double_backward(head: torch.nn.Module, features, targets, delta, gamma):
    """Eq. 4 as written: the two batch-mean gradients of the squared error, then their distance."""
    params = list(head.parameters())

    def mean_grad(t):
        loss = (
            ((head(t).reshape(targets.shape[0], -1) - targets.reshape(targets.shape[0], -1)) ** 2)
            .sum(1)
            .mean()
        )
        return torch.autograd.grad(loss, params, create_graph=True)

    clean, noisy = mean_grad(features), mean_grad(features + gamma * delta)
    return torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(clean, noisy, strict=True)))


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_squared_error_lgm_equals_double_backward_of_eq4(outputs, head_kind):
    torch.manual_seed(0)
    batch, dim, gamma = 6, 5, 0.1
    if head_kind == "linear":
        head = torch.nn.Linear(dim, outputs).double()
    else:
        head = torch.nn.Sequential(
            torch.nn.Linear(dim, 4), torch.nn.Tanh(), torch.nn.Linear(4, outputs)
        ).double()
    features = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    targets = (
        torch.randn(batch, dtype=torch.float64) if outputs == 1 else torch.randn(batch, outputs).double()
    )
    delta = torch.randn(batch, dim, dtype=torch.float64)

    mse, penalty, predictions = squared_error_lgm(head, features, targets, gamma=gamma, delta=delta)
    reference = eq4_by_double_backward(head, features, targets, delta, gamma)
    assert penalty.item() == pytest.approx(reference.item(), rel=1e-10)
    by_hand = ((head(features).reshape(targets.shape) - targets) ** 2).reshape(batch, -1).sum(1).mean()
    assert mse.item() == pytest.approx(by_hand.item())
    assert predictions.shape == targets.shape
    # Gradients w.r.t. the head and the features (the path into the backbone) equal Eq. 4's.
    inputs = [*head.parameters(), features]
    ours = torch.autograd.grad(penalty, inputs)
    theirs = torch.autograd.grad(reference, inputs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # And finite differences on a few feature entries.
    for index in [(0, 0), (3, 2), (5, 4)]:
        h = 1e-6
        up, down = features.detach().clone(), features.detach().clone()
        up[index] += h
        down[index] -= h
        numeric = (
            squared_error_lgm(head, up, targets, gamma=gamma, delta=delta).penalty.item()
            - squared_error_lgm(head, down, targets, gamma=gamma, delta=delta).penalty.item()
        ) / (2 * h)
        assert float(ours[-1][index]) == pytest.approx(numeric, rel=1e-5)
    # γ = 0: no penalty and zero (not NaN) gradients (exactly 0 for the closed form: no cancellation).
    zero = squared_error_lgm(head, features, targets, gamma=0.0, delta=delta).penalty
    assert zero.item() == 0.0 if head_kind == "linear" else zero.item() < 1e-12
    assert all(
        torch.isfinite(g).all() for g in torch.autograd.grad(zero, inputs, allow_unused=True) if g is not None
    )


@pytest.mark.parametrize("regression", [False, True])
def test_lgm_gradient_flows_through_the_features_into_the_encoder(regression):
    model, batch = tiny_model(1 if regression else 3), tiny_batch()
    targets = torch.tensor([0.7, -0.2], dtype=torch.float64) if regression else torch.tensor([2, 0])

    def l_gm():
        embeds = model.embed(batch)
        features, _ = model.features(batch, embeds)
        generator = torch.Generator().manual_seed(5)  # the same δ at every evaluation
        return gradient_matching_terms(
            model.head, features, targets, regression=regression, gamma=0.2, generator=generator
        ).penalty

    model.zero_grad()
    l_gm().backward()
    encoder_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert encoder_grads and max(float(g.abs().max()) for g in encoder_grads) > 0
    assert_gradient_matches_finite_differences(model, l_gm)


def test_make_regulariser_names_and_weights():
    assert make_regulariser("none").name == "none"
    assert isinstance(make_regulariser("l2-sp", 0.1, beta=0.0), L2SP)
    with pytest.raises(
        UsageError, match="unknown regulariser 'dropout'; choose from none, l2-sp, smart, lnsr"
    ):
        make_regulariser("dropout", 1.0)
    with pytest.raises(UsageError, match="weight of smart must be a finite number >= 0"):
        make_regulariser("smart", -1.0)
    model = tiny_model()
    with pytest.raises(UsageError, match="LNSR's layer 3 does not exist: the encoder has layers 0..2"):
        LNSR(1.0, layer=3).attach(model, 1)
