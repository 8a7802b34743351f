"""LGM loss (Eq. 3, 4, 6): closed form and fused path vs autograd, vs a per-sample brute-force
reference of Eq. 4, and the gradient of L_gm vs central finite differences (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.heads import LinearHead, MLPHead
from noisylm.probing.lgm import (
    VARIANTS,
    LGMLoss,
    _difference_sq_and_adjoint,
    _gram_or_direct_sq,
    _times_transposed,
    lgm_penalty,
)

DT = torch.float64


def _batch(batch=12, dim=7, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=gen, dtype=DT)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return features, labels


def _head(kind, dim, classes, seed=0, bias=True):
    torch.manual_seed(seed)
    head = LinearHead(dim, classes) if kind == "linear" else MLPHead(dim, classes)
    if not bias:
        head.bias = None
    return head.to(DT)


def _terms_and_grads(head, features, labels, gamma, variant, method, seed=1, lam=0.7):
    head.zero_grad()
    terms = lgm_penalty(
        head,
        features,
        labels,
        gamma=gamma,
        variant=variant,
        method=method,
        generator=torch.Generator().manual_seed(seed),
    )
    (terms.ce + lam * terms.penalty).backward()
    return terms, [p.grad.clone() for p in head.parameters()]


def _reference_eq4(head, features, delta, labels, gamma):
    """Eq. 4 by brute force: one autograd.grad per sample, then mean, difference and norm."""
    params = list(head.parameters())

    def mean_grad(inputs):
        total = [torch.zeros_like(p) for p in params]
        for row, label in zip(inputs, labels, strict=True):
            loss = F.cross_entropy(head(row[None]), label[None])
            for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc += g / len(labels)
        return total

    clean, perturbed = mean_grad(features), mean_grad(features + gamma * delta)
    return torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(clean, perturbed, strict=True)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", ["lgm", "norm", "cosine", "l2-output"])
def test_linear_closed_form_matches_autograd(variant, bias):
    features, labels = _batch()
    head = _head("linear", 7, 5, bias=bias)
    methods = ["closed-form", "autograd"] + (["fused"] if variant == "lgm" else [])
    results = {m: _terms_and_grads(head, features, labels, 0.3, variant, m) for m in methods}
    ref_terms, ref_grads = results["autograd"]
    for method, (terms, grads) in results.items():
        torch.testing.assert_close(terms.penalty, ref_terms.penalty, rtol=1e-10, atol=1e-12, msg=method)
        torch.testing.assert_close(terms.ce, ref_terms.ce)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=method)


# (batch, dim, classes): the first takes the direct products in the fused paths, the second the Gram
# route (2B < the layer's width, see `_difference_sq_and_adjoint`).
NARROW_AND_WIDE = [(16, 9, 4), (3, 24, 30)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "dim", "classes"), NARROW_AND_WIDE)
def test_mlp_fused_path_matches_double_backward(dtype, batch, dim, classes):
    features, labels = _batch(batch=batch, dim=dim, classes=classes, seed=4)
    head = _head("mlp", dim, classes, seed=2).to(dtype)
    features = features.to(dtype)
    ref_terms, ref_grads = _terms_and_grads(head, features, labels, 0.05, "lgm", "autograd")
    terms, grads = _terms_and_grads(head, features, labels, 0.05, "lgm", "fused")
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(terms.penalty, ref_terms.penalty, **tol)
    torch.testing.assert_close(terms.ce, ref_terms.ce)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **tol)


@pytest.mark.parametrize(("batch", "dim", "classes"), NARROW_AND_WIDE)
def test_linear_fused_path_matches_autograd_on_both_routes(batch, dim, classes):
    features, labels = _batch(batch=batch, dim=dim, classes=classes, seed=5)
    head = _head("linear", dim, classes, seed=3)
    ref_terms, ref_grads = _terms_and_grads(head, features, labels, 0.1, "lgm", "autograd")
    terms, grads = _terms_and_grads(head, features, labels, 0.1, "lgm", "fused")
    torch.testing.assert_close(terms.penalty, ref_terms.penalty, rtol=1e-9, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "k", "dim"), [(6, 2, 40), (6, 40, 40), (8, 30, 7)])
def test_difference_norm_and_adjoint_by_either_route_equal_brute_force(n, k, dim):
    gen = torch.Generator().manual_seed(n + k + dim)
    coeffs, rows = torch.randn(n, k, generator=gen, dtype=DT), torch.randn(n, dim, generator=gen, dtype=DT)
    difference = coeffs.T @ rows  # formed here only, as the reference
    sq, rows_dt = _difference_sq_and_adjoint(coeffs, rows)
    torch.testing.assert_close(sq, difference.pow(2).sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows_dt, rows @ difference.T, rtol=1e-12, atol=1e-12)


def test_float32_closed_form_matches_autograd_to_float_tolerance():
    features, labels = _batch(batch=32, dim=64, classes=10)
    head = _head("linear", 64, 10).float()
    features = features.float()
    ref_terms, ref_grads = _terms_and_grads(head, features, labels, 0.01, "lgm", "autograd")
    for method in ("fused", "closed-form"):
        terms, grads = _terms_and_grads(head, features, labels, 0.01, "lgm", method)
        torch.testing.assert_close(terms.penalty, ref_terms.penalty, rtol=1e-3, atol=1e-6)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize(("batch", "dim", "classes"), [(6, 5, 3), (2, 12, 16)])
def test_penalty_equals_per_sample_reference_of_eq4(kind, batch, dim, classes):
    features, labels = _batch(batch=batch, dim=dim, classes=classes)
    head = _head(kind, dim, classes)
    gamma, seed = 0.2, 3
    delta = torch.randn(features.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    expected = _reference_eq4(head, features, delta, labels, gamma)
    methods = ["fused", "closed-form", "autograd"] if kind == "linear" else ["fused", "autograd"]
    for method in methods:
        terms = lgm_penalty(
            head, features, labels, gamma=gamma, method=method, generator=torch.Generator().manual_seed(seed)
        )
        torch.testing.assert_close(terms.penalty.detach(), expected, rtol=1e-9, atol=1e-12, msg=method)


@pytest.mark.parametrize(
    ("kind", "method", "shape"),
    [
        ("linear", "fused", (8, 4, 3)),
        ("linear", "fused", (2, 5, 12)),  # the Gram route
        ("linear", "closed-form", (8, 4, 3)),
        ("mlp", "fused", (8, 4, 3)),
        ("mlp", "fused", (2, 12, 3)),  # the Gram route
        ("mlp", "autograd", (8, 4, 3)),
    ],
)
def test_gradient_of_penalty_matches_finite_differences(kind, method, shape):
    """∂L_gm/∂θ flows through both gradient terms: compare with central differences at fixed δ."""
    batch, dim, classes = shape
    features, labels = _batch(batch=batch, dim=dim, classes=classes)
    head = _head(kind, dim, classes)

    def penalty():
        return lgm_penalty(
            head, features, labels, gamma=0.5, method=method, generator=torch.Generator().manual_seed(5)
        ).penalty

    head.zero_grad()
    penalty().backward()
    eps = 1e-6
    gen = torch.Generator().manual_seed(0)
    for param in head.parameters():
        flat = param.data.view(-1)
        for index in torch.randperm(flat.numel(), generator=gen)[:6].tolist():
            old = flat[index].item()
            flat[index] = old + eps
            up = penalty().item()
            flat[index] = old - eps
            down = penalty().item()
            flat[index] = old
            numeric = (up - down) / (2 * eps)
            assert param.grad.view(-1)[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("classes", [1, 2, 8, 9, 20])
def test_both_layouts_of_rows_times_weight_transposed_agree(classes):
    gen = torch.Generator().manual_seed(classes)
    rows = torch.randn(24, 33, generator=gen, dtype=DT)
    weight = torch.randn(classes, 33, generator=gen, dtype=DT)
    reference = torch.einsum("bd,cd->bc", rows, weight)
    torch.testing.assert_close(_times_transposed(rows, weight), reference, rtol=1e-12, atol=1e-12)


def test_gram_and_direct_products_agree():
    gen = torch.Generator().manual_seed(0)
    for rows, classes, dim in [(8, 50, 30), (64, 3, 500), (6, 40, 2)]:
        coeffs = torch.randn(rows, classes, generator=gen, dtype=DT)
        x = torch.randn(rows, dim, generator=gen, dtype=DT)
        torch.testing.assert_close(_gram_or_direct_sq(coeffs, x), (coeffs.T @ x).pow(2).sum())
    # Many classes and a small batch take the Gram route inside the closed form; check it end to end.
    features, labels = _batch(batch=3, dim=40, classes=30)
    head = _head("linear", 40, 30)
    a, ga = _terms_and_grads(head, features, labels, 0.1, "lgm", "closed-form")
    b, gb = _terms_and_grads(head, features, labels, 0.1, "lgm", "autograd")
    torch.testing.assert_close(a.penalty, b.penalty)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gamma_zero_gives_zero_penalty_and_no_nan(kind, variant):
    features, labels = _batch()
    head = _head(kind, 7, 5).float()
    methods = ["fused", "closed-form", "autograd"] if kind == "linear" else ["fused", "autograd"]
    if variant != "lgm":
        methods = [m for m in methods if m != "fused"]
    for method in methods:
        terms, grads = _terms_and_grads(head, features.float(), labels, 0.0, variant, method)
        assert torch.isfinite(terms.penalty) and all(torch.isfinite(g).all() for g in grads)
        if variant in ("lgm", "cosine", "l2-output", "none"):
            assert terms.penalty.item() == pytest.approx(0.0, abs=1e-5)


def test_total_loss_is_ce_plus_lambda_penalty_and_none_is_plain_ce():
    features, labels = _batch()
    head = _head("linear", 7, 5)
    criterion = LGMLoss(head, gamma=0.05, lam=0.4, generator=torch.Generator().manual_seed(0))
    loss = criterion(features, labels)
    assert loss.item() == pytest.approx((criterion.last.ce + 0.4 * criterion.last.penalty).item())
    assert criterion.last.penalty.item() > 0
    plain = LGMLoss(head, variant="none")(features, labels)
    assert plain.item() == pytest.approx(F.cross_entropy(head(features), labels).item())


def test_fresh_noise_each_step_and_reproducible_with_a_seed():
    features, labels = _batch()
    head = _head("linear", 7, 5)
    criterion = LGMLoss(head, gamma=0.1, generator=torch.Generator().manual_seed(7))
    first, second = criterion(features, labels).item(), criterion(features, labels).item()
    assert first != second  # δ is redrawn every call
    again = LGMLoss(head, gamma=0.1, generator=torch.Generator().manual_seed(7))
    assert again(features, labels).item() == first


def test_l2sp_anchor_adds_half_alpha_squared_distance():
    features, labels = _batch()
    head = _head("linear", 7, 5)
    criterion = LGMLoss(head, variant="none", anchor_weight=0.3)
    assert criterion(features, labels).item() == pytest.approx(F.cross_entropy(head(features), labels).item())
    with torch.no_grad():
        head.weight.add_(0.1)
    expected = F.cross_entropy(head(features), labels) + 0.15 * (0.1**2) * head.weight.numel()
    assert criterion(features, labels).item() == pytest.approx(expected.item())


def test_features_that_need_grad_get_the_same_gradient_as_autograd():
    features, labels = _batch()
    head = _head("linear", 7, 5)
    grads = []
    for method in ("auto", "autograd"):
        x = features.clone().requires_grad_(True)
        terms = lgm_penalty(
            head, x, labels, gamma=0.3, method=method, generator=torch.Generator().manual_seed(2)
        )
        (terms.penalty).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_lgm_trains_a_real_head_on_digits():
    """CE + LGM fits real data: scikit-learn digits pixels, linear head, 60 full-batch Adam steps."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = torch.tensor(digits.data[:600] / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target[:600])
    torch.manual_seed(0)
    head = LinearHead(64, 10)
    criterion = LGMLoss(head, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        criterion(features, labels).backward()
        optimizer.step()
    accuracy = (head(features).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


def test_bad_inputs_raise_one_clear_error():
    features, labels = _batch()
    with pytest.raises(NoisyLMError, match="dimension 7 but the head expects 9"):
        lgm_penalty(_head("linear", 9, 5), features, labels)
    with pytest.raises(NoisyLMError, match="dimension 7 but the head expects 9"):
        lgm_penalty(_head("mlp", 9, 5), features, labels)
    head = _head("linear", 7, 5)
    with pytest.raises(UsageError, match="unknown LGM variant"):
        LGMLoss(head, variant="sam")
    with pytest.raises(UsageError, match="gamma"):
        lgm_penalty(head, features, labels, gamma=-1.0)
    with pytest.raises(UsageError, match="lam"):
        LGMLoss(head, lam=float("nan"))
    with pytest.raises(NoisyLMError, match="one label per feature row"):
        lgm_penalty(head, features, labels[:-1])
    with pytest.raises(NoisyLMError, match="2-D"):
        lgm_penalty(head, features[0], labels)
    with pytest.raises(NoisyLMError, match="integer class ids"):
        lgm_penalty(head, features, labels.double())
    with pytest.raises(UsageError, match="nn.Linear head"):
        lgm_penalty(_head("mlp", 7, 5), features, labels, method="closed-form")
    with pytest.raises(UsageError, match="variant 'lgm' only"):
        lgm_penalty(_head("mlp", 7, 5), features, labels, method="fused", variant="norm")


# --------------------------------------------------------------------------------------------------
# A per-dimension scale of δ (the probe's --gamma-scale feature-std).


class _InputRecorder(torch.nn.Module):
    """A real head (one linear layer, not an nn.Linear, so LGM takes the autograd path) that keeps the
    rows it was last given: the clean batch stacked on the perturbed one."""

    def __init__(self, dim, classes):
        super().__init__()
        self.layer = torch.nn.Linear(dim, classes)
        self.seen = None

    def forward(self, features):
        self.seen = features.detach().clone()
        return self.layer(features)


def test_feature_scale_gives_each_dimension_a_perturbation_of_std_gamma_times_scale():
    # Features whose dimensions span five orders of magnitude, like raw hidden states next to
    # L2-normalised ones; the scale is their per-dimension std, as the probe's `feature-std` uses.
    from noisylm.probing.protocol import ProbeData, perturbation_scale

    gen = torch.Generator().manual_seed(0)
    stds = torch.tensor([1e-3, 0.1, 1.0, 50.0])
    train = torch.randn(5000, 4, generator=gen) * stds + 3.0
    labels = torch.randint(0, 3, (5000,), generator=gen)
    data = ProbeData("b", "d", 3, ["a", "b", "c"], {s: (train, labels) for s in ("train", "val", "test")})
    scale = perturbation_scale(data, "feature-std")
    torch.testing.assert_close(scale.double(), torch.from_numpy(train.double().numpy().std(0, ddof=1)))
    assert perturbation_scale(data, "absolute") is None

    gamma, batch = 0.3, 20000
    features = torch.randn(batch, 4, generator=gen) * stds
    batch_labels = torch.randint(0, 3, (batch,), generator=gen)
    head = _InputRecorder(4, 3)
    for feature_scale, expected in ((scale, gamma * scale), (None, torch.full((4,), gamma))):
        lgm_penalty(
            head, features, batch_labels, gamma=gamma, variant="l2-output",
            generator=torch.Generator().manual_seed(1), feature_scale=feature_scale,
        )  # fmt: skip
        clean, perturbed = head.seen[:batch], head.seen[batch:]
        torch.testing.assert_close(clean, features)
        std = (perturbed - clean).double().std(0)
        # 20 000 draws: the sample std has a standard error of 0.5%; 3% is six of them.
        torch.testing.assert_close(std / expected.double(), torch.ones(4, dtype=DT), rtol=0, atol=0.03)
        assert (perturbed - clean).double().mean(0).abs().max() < 5 * expected.max() / batch**0.5


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_scaled_penalty_equals_per_sample_reference_with_a_scaled_delta(kind):
    features, labels = _batch(batch=6, dim=5, classes=3)
    head = _head(kind, 5, 3)
    gamma, seed = 0.2, 3
    scale = torch.tensor([0.0, 0.5, 1.0, 4.0, 20.0], dtype=DT)
    delta = torch.randn(features.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    expected = _reference_eq4(head, features, scale * delta, labels, gamma)
    methods = ["fused", "closed-form", "autograd"] if kind == "linear" else ["fused", "autograd"]
    for method in methods:
        terms = lgm_penalty(
            head, features, labels, gamma=gamma, method=method,
            generator=torch.Generator().manual_seed(seed), feature_scale=scale,
        )  # fmt: skip
        torch.testing.assert_close(terms.penalty.detach(), expected, rtol=1e-9, atol=1e-12, msg=method)


@pytest.mark.parametrize("variant", ["lgm", "norm", "cosine", "l2-output"])
def test_unit_feature_scale_is_exactly_the_absolute_gamma(variant):
    features, labels = _batch()
    ones = torch.ones(7, dtype=DT)
    for kind in ("linear", "mlp"):
        results = []
        for feature_scale in (None, ones):
            head = _head(kind, 7, 5)
            criterion = LGMLoss(
                head, gamma=0.3, variant=variant, generator=torch.Generator().manual_seed(2),
                feature_scale=feature_scale,
            )  # fmt: skip
            loss = criterion(features, labels)
            loss.backward()
            results.append((loss.detach(), [p.grad for p in head.parameters()]))
        (loss_a, grads_a), (loss_b, grads_b) = results
        assert torch.equal(loss_a, loss_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_bad_feature_scale_is_one_clear_error():
    features, labels = _batch()
    head = _head("linear", 7, 5)
    with pytest.raises(NoisyLMError, match="feature_scale has shape \\(3,\\) but the features have 7"):
        lgm_penalty(head, features, labels, feature_scale=torch.ones(3, dtype=DT))
    with pytest.raises(UsageError, match="feature_scale must be a 1-D tensor of finite numbers >= 0"):
        LGMLoss(head, feature_scale=-torch.ones(7))
