"""Proposition 1 / Lemma 1 (noisylm.theory.formulas) against brute-force numerics and hand-computed values.

Each statement of Prop. 1 is checked on grids of (α, k, p_c, p_n) by evaluating f(ε) = L(P^m,h*) −
L(P^m,h) (Eq. 17) directly from the loss definitions on a dense ε grid, never through the closed forms
under test. Lemma 1 is checked on explicit finite joint distributions over (prefix, token).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from noisylm.errors import NoisyLMError
from noisylm.theory import formulas as T


def mixed_gap_brute(eps: np.ndarray, alpha: float, k: float, p_c: float, p_n: float) -> np.ndarray:
    """L(P^m,h*) − L(P^m,h) straight from the definitions: Lemma 1 + the losses of Prop. 1."""
    loss_m_ref = alpha * (-math.log(p_n)) + (1 - alpha) * (-math.log(p_c))
    loss_m = alpha * (-np.log(p_n + eps / k)) + (1 - alpha) * (-np.log(p_c - eps))
    return loss_m_ref - loss_m


def eps_grid(p_c: float, n: int = 4001) -> np.ndarray:
    return np.linspace(0.0, p_c, n + 1)[1:-1]  # open interval (0, p_c)


# A grid covering every regime: tiny p_n (uniform noise over 50k tokens) to p_n ~ p_c (a second language).
ALPHAS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.33, 0.4, 0.5, 0.55, 0.7, 0.9, 0.99]
KS = [0.1, 1.0, 3.0, 30.0, 1e3, 1e5]
PCS = [0.02, 0.05, 0.3, 0.9]
PNS = [2e-5, 1e-3, 0.06, 0.5]


def grid():
    for a in ALPHAS:
        for k in KS:
            for pc in PCS:
                for pn in PNS:
                    yield a, k, pc, pn


# ------------------------------------------------------------------------ Prop. 1, brute force on grids
def test_statement_1_no_epsilon_beats_h_star_when_alpha_below_threshold():
    checked = 0
    for a, k, pc, pn in grid():
        if a > T.alpha_threshold(k, pc, pn):
            continue
        gap = mixed_gap_brute(eps_grid(pc), a, k, pc, pn)
        assert np.all(gap < 1e-12), (a, k, pc, pn)  # L(P^m,h) >= L(P^m,h*) for all 0 < eps < p_c
        prop = T.proposition1(a, k, pc, pn)
        assert prop.statement == "1" and prop.eta <= 0 and prop.epsilon_upper == 0.0
        assert prop.clean_loss_increase_upper == 0.0
        checked += 1
    assert checked > 100


def test_statement_2_every_epsilon_below_eta_beats_h_star():
    checked = 0
    for a, k, pc, pn in grid():
        e = T.eta(a, k, pc, pn)
        if e <= 0:
            continue
        assert a > T.alpha_threshold(k, pc, pn)  # the two forms of the condition agree
        eps = np.linspace(0, e, 502)[1:-1]
        assert np.all(mixed_gap_brute(eps, a, k, pc, pn) > 0), (a, k, pc, pn)
        # ... and the best epsilon of the family is eta itself (argmax of Eq. 17)
        dense = eps_grid(pc, 20001)
        best = dense[np.argmax(mixed_gap_brute(dense, a, k, pc, pn))]
        assert abs(best - e) <= 2 * pc / 20001
        assert T.f_maximiser(a, k, pc, pn)[0] == pytest.approx(e)
        assert T.proposition1(a, k, pc, pn).epsilon_lower == pytest.approx(e)
        checked += 1
    assert checked > 100


def test_statement_3a_epsilon_at_least_3eta_is_worse_than_h_star():
    checked = 0
    for a, k, pc, pn in grid():
        e = T.eta(a, k, pc, pn)
        if not (a < 1 / 3 and e > 0 and k > T.k_threshold_3eta(a, pc, pn)):
            continue
        assert 3 * e < pc
        eps = np.linspace(3 * e, pc, 2001)[:-1]
        assert np.all(mixed_gap_brute(eps, a, k, pc, pn) < 0), (a, k, pc, pn)
        prop = T.proposition1(a, k, pc, pn)
        assert prop.statement == "3a" and prop.epsilon_upper == pytest.approx(3 * e)
        assert prop.epsilon_upper_exact <= prop.epsilon_upper
        checked += 1
    assert checked > 10


def test_statement_3b_epsilon_at_least_2eta_is_worse_than_h_star():
    checked = 0
    for a, k, pc, pn in grid():
        e = T.eta(a, k, pc, pn)
        if not (a > 0.5 and e > 0 and k > T.k_threshold_2eta(a, pc, pn)):
            continue
        assert 2 * e < pc  # the k condition is exactly what makes 2*eta < p_c
        eps = np.linspace(2 * e, pc, 2001)[:-1]
        assert np.all(mixed_gap_brute(eps, a, k, pc, pn) < 0), (a, k, pc, pn)
        assert T.proposition1(a, k, pc, pn).statement == "3b"
        checked += 1
    assert checked > 10


def test_statement_3b_k_condition_only_makes_the_bound_non_trivial():
    # alpha > 1/2 and k below the threshold: 2*eta >= p_c, so eps < p_c <= 2*eta anyway.
    for a, k, pc, pn in grid():
        e = T.eta(a, k, pc, pn)
        if a > 0.5 and e > 0 and k <= T.k_threshold_2eta(a, pc, pn):
            assert 2 * e >= pc * (1 - 1e-12)


def test_3eta_bound_needs_the_k_condition():
    # Counter-example kept in docs/theory.md: below the k threshold the 3*eta bound can fail.
    a, k, pc, pn = 0.2, 1.0, 0.3, 1e-4
    assert k < T.k_threshold_3eta(a, pc, pn)
    e = T.eta(a, k, pc, pn)
    assert mixed_gap_brute(np.array([3 * e]), a, k, pc, pn)[0] > 0  # eps = 3*eta still beats h*
    prop = T.proposition1(a, k, pc, pn)
    assert prop.statement == "2" and prop.epsilon_upper is None
    assert prop.epsilon_upper_exact > 3 * e


def test_harmful_epsilon_limit_is_the_root_on_grid():
    for a, k, pc, pn in grid():
        root = T.harmful_epsilon_limit(a, k, pc, pn)
        e = T.eta(a, k, pc, pn)
        if e <= 0:
            assert root == 0.0
            continue
        assert e < root < pc
        dense = eps_grid(pc, 4001)
        gap = mixed_gap_brute(dense, a, k, pc, pn)
        inside, outside = dense[dense < root * (1 - 1e-6)], dense[dense > root * (1 + 1e-6)]
        assert np.all(mixed_gap_brute(inside, a, k, pc, pn) > -1e-12)
        assert np.all(mixed_gap_brute(outside, a, k, pc, pn) < 1e-12)
        assert gap.shape == dense.shape


# ------------------------------------------------------------------------ proof steps (Appendix B.2)
params = st.tuples(
    st.floats(0.001, 0.999),  # alpha
    st.floats(1e-2, 1e6),  # k
    st.floats(1e-3, 1.0),  # p_c
    st.floats(1e-5, 1.0),  # p_n
)


@settings(max_examples=150, deadline=None)
@given(params, st.floats(1e-6, 1 - 1e-6))
def test_eq15_eq16_sandwich_and_eq18_derivative(p, u):
    a, k, pc, pn = p
    eps = u * pc
    assume(pn + eps / k <= 1.0)
    e = T.eta(a, k, pc, pn)
    f = T.f_gap(eps, a, k, pc, pn)
    assert f == pytest.approx(mixed_gap_brute(np.array(eps), a, k, pc, pn), rel=1e-9, abs=1e-12)
    upper = eps * e / (pc * k * pn)  # Eq. 15, corrected: the paper drops p_c in the denominator
    lower = eps * (e - eps) / ((pc - eps) * (k * pn + eps))  # Eq. 16
    tol = 1e-9 * (abs(upper) + abs(lower) + abs(f)) + 1e-15
    assert lower - tol <= f <= upper + tol
    # Eq. 18 against a central finite difference of Eq. 17
    h = 1e-6 * min(eps, pc - eps)
    fd = (T.f_gap(eps + h, a, k, pc, pn) - T.f_gap(eps - h, a, k, pc, pn)) / (2 * h)
    assert T.f_gap_derivative(eps, a, k, pc, pn) == pytest.approx(fd, rel=1e-4, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(params)
def test_proposition1_consistency(p):
    a, k, pc, pn = p
    prop = T.proposition1(a, k, pc, pn)
    assert (prop.eta <= 0) == (prop.statement == "1")
    if abs(a - prop.alpha_star) > 1e-12:  # at alpha = alpha* itself, rounding may fall either way
        assert (prop.eta <= 0) == (a <= prop.alpha_star)
    assert prop.epsilon_optimum == max(prop.eta, 0.0)
    assert 0.0 <= prop.epsilon_optimum <= prop.epsilon_upper_exact < pc
    if prop.epsilon_upper is not None:
        assert prop.epsilon_upper_exact <= prop.epsilon_upper * (1 + 1e-9) + 1e-300
        assert prop.clean_loss_increase_upper_exact <= prop.clean_loss_increase_upper * (1 + 1e-9) + 1e-300
    if prop.eta > 0:
        assert T.f_gap(prop.eta, a, k, pc, pn) > 0
        # eps_0 is the sign change of f (checked as a bracket: f is steep near p_c)
        root = prop.epsilon_upper_exact
        assert T.f_gap(root * (1 - 1e-9), a, k, pc, pn) > -1e-12
        if root * (1 + 1e-9) < pc:
            assert T.f_gap(root * (1 + 1e-9), a, k, pc, pn) < 1e-12
    bound = T.predicted_clean_loss_increase(a, k, pc, pn)
    assert T.predicted_clean_loss_increase(a, k, pc, pn, "optimum") <= bound
    assert T.predicted_clean_loss_increase(a, k, pc, pn, "exact") <= bound * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.001, 0.3333), st.floats(1.0 + 1e-6, 1e4))
def test_g3_decreasing_and_eq24_factorisation(a, scale):
    # g3(t) = f(3*eta) with t = p_c/(k p_n) (Eq. 20); Eq. 24 with the corrected denominator 3(1-a)t.
    t_lo, t_hi = (1 - a) / a, (1 - a) * (2 - 3 * a) / (a * (1 - 3 * a))
    assume(t_hi > t_lo * (1 + 1e-6))
    t = t_lo + (t_hi - t_lo) * (1 - 1 / scale)
    assume(t_lo < t < t_hi)

    def g3(t):
        return (1 - a) * math.log(1 - 3 * a + 3 * (1 - a) / t) + a * math.log(3 * a - 2 + 3 * a * t)

    num = (a * t + a - 1) * (3 * a * (1 - 3 * a) * t + 3 * (1 - a) * (3 * a - 2))
    den = ((1 - 3 * a) * t**2 + 3 * (1 - a) * t) * (3 * a - 2 + 3 * a * t)
    h = 1e-7 * t
    fd = (g3(t + h) - g3(t - h)) / (2 * h)
    assert num / den == pytest.approx(fd, rel=1e-4, abs=1e-9)
    assert g3(t) < 1e-12 and num / den < 1e-12
    # and g3 really is f(3*eta): pick p_c, p_n, k with that t
    pc, pn = 0.5, 0.01
    k = pc / (t * pn)
    assert T.f_gap(3 * T.eta(a, k, pc, pn), a, k, pc, pn) == pytest.approx(g3(t), rel=1e-7, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.5001, 0.999), st.floats(1e-6, 1 - 1e-6))
def test_g2_derivative_eq29_corrected(a, u):
    t_lo, t_hi = (1 - a) / a, 2 * (1 - a) / (2 * a - 1)
    t = t_lo + (t_hi - t_lo) * u

    def g2(t):
        return (1 - a) * math.log(1 - 2 * a + 2 * (1 - a) / t) + a * math.log(2 * a - 1 + 2 * a * t)

    den = ((1 - 2 * a) * t**2 + 2 * (1 - a) * t) * (2 * a - 1 + 2 * a * t)
    corrected = 2 * (1 - 2 * a) * (a * t - (1 - a)) ** 2 / den
    h = 1e-5 * min(t_hi - t, t)  # g2 is smooth across t_lo, so h need not shrink there
    fd = (g2(t + h) - g2(t - h)) / (2 * h)
    assert corrected == pytest.approx(fd, rel=1e-3, abs=1e-6)
    assert g2(t) < 1e-12


def test_eq29_as_printed_is_wrong_at_the_left_end():
    a = 0.6
    t = (1 - a) / a  # here g2'(t) = 0 (double root of the numerator), the printed Eq. 29 is not 0
    den = ((1 - 2 * a) * t**2 + 2 * (1 - a) * t) * (2 * a - 1 + 2 * a * t)
    printed = 2 * (1 - 2 * a) * (a * t + 1 - a) ** 2 / den
    corrected = 2 * (1 - 2 * a) * (a * t - (1 - a)) ** 2 / den
    # by hand: t = 2/3, den = (-0.2*4/9 + 0.8*2/3) * (0.2 + 0.8) = 4/9, printed = -0.4 * 0.8**2 / (4/9)
    assert den == pytest.approx(4 / 9)
    assert corrected == pytest.approx(0.0, abs=1e-15) and printed == pytest.approx(-0.576)


# ----------------------------------------------------------------------- Eqs. 11–13 and round trips
@settings(max_examples=150, deadline=None)
@given(
    st.floats(1e-3, 0.9),  # p_c
    st.floats(1e-5, 0.9),  # p_n
    st.floats(1e-3, 1e5),  # k
    st.floats(1e-4, 0.999),  # eps / p_c
)
def test_round_trip_epsilon_k_losses(pc, pn, k, u):
    eps = u * pc
    assume(pn + eps / k < 1.0)
    clean, noise = T.losses_from_epsilon(eps, k, pc, pn)
    ref_c, ref_n = T.loss_from_prob(pc), T.loss_from_prob(pn)
    assert T.epsilon_from_losses(ref_c, clean) == pytest.approx(eps, rel=1e-8)
    assert T.epsilon_over_k_from_losses(ref_n, noise) == pytest.approx(eps / k, rel=1e-6)
    assume(noise < ref_n - 1e-9)  # eps/k must survive the float round trip
    k_back = T.k_from_losses(ref_c, ref_n, clean, noise)
    assert k_back == pytest.approx(k, rel=1e-5)
    # the corrected closed form of Eq. 13 equals eps / (eps/k)
    closed = math.exp(noise - clean) * math.expm1(clean - ref_c) / -math.expm1(noise - ref_n)
    assert closed == pytest.approx(k_back, rel=1e-8)
    assert T.k_lower_bound(ref_c, clean, noise) < k_back * (1 + 1e-9)


def test_losses_to_k_hand_computed():
    # L(P^c,h*)=3.0, L(P^c,h)=3.05, L(P^n,h*)=10.9, L(P^n,h)=10.5 (numbers used in docs/theory.md)
    eps = math.exp(-3.0) - math.exp(-3.05)
    eps_k = math.exp(-10.5) - math.exp(-10.9)
    k = T.k_from_losses(3.0, 10.9, 3.05, 10.5)
    assert k == pytest.approx(eps / eps_k, rel=1e-12)
    assert k == pytest.approx(267.469, rel=1e-5)
    assert T.k_lower_bound(3.0, 3.05, 10.5) == pytest.approx(math.exp(10.5 - 3.05) * 0.05, rel=1e-12)
    assert T.k_lower_bound(3.0, 3.05, 10.5) == pytest.approx(85.993, rel=1e-4)
    # the first printed line of Eq. 13 gives a negative "k"
    printed = math.exp(10.5 - 10.9) * math.expm1(0.05) / math.expm1(10.5 - 10.9)
    assert printed < 0


# ------------------------------------------------------------------------- Fig. 9 (Appendix D.3)
def test_fig9_values_by_hand():
    a, k = 0.55, 1.0
    pc, pn = math.exp(-2.9), math.exp(-2.8)
    # hand: p_c = 0.0550232, p_n = 0.0608101, eta = 0.55*0.0550232 - 0.45*0.0608101 = 0.0028982
    assert pc == pytest.approx(0.0550232, abs=1e-7) and pn == pytest.approx(0.0608101, abs=1e-7)
    e = T.eta(a, k, pc, pn)
    assert e == pytest.approx(0.0028982, abs=1e-7)
    prop = T.proposition1(a, k, pc, pn)
    assert prop.statement == "3b"
    assert prop.alpha_star == pytest.approx(0.5249792, abs=1e-7)
    assert prop.k_threshold == pytest.approx(0.1005375, abs=1e-7)
    # f at a few points (Fig. 9a): f(e) = 0.45 log(1 - e/p_c) + 0.55 log(1 + e/p_n)
    for eps, hand in [(0.001, 0.45 * math.log(1 - 0.001 / pc) + 0.55 * math.log(1 + 0.001 / pn))]:
        assert T.f_gap(eps, a, k, pc, pn) == pytest.approx(hand, rel=1e-12)
    # by hand: 0.45*ln(1 - 0.018174) + 0.55*ln(1 + 0.016445) = -0.0082536 + 0.0089712 = 0.0007176
    assert T.f_gap(0.001, a, k, pc, pn) == pytest.approx(7.176e-4, rel=1e-3)
    assert T.f_gap(e, a, k, pc, pn) == pytest.approx(1.2578e-3, rel=1e-3)  # the peak
    # by hand: 0.45*ln(1 - 0.072697) + 0.55*ln(1 + 0.065778) = -0.033965 + 0.035038 = 0.001073
    assert T.f_gap(0.004, a, k, pc, pn) == pytest.approx(1.073e-3, rel=2e-3)
    assert T.f_gap(2 * e, a, k, pc, pn) < 0  # ~ -1.71e-5: the 2*eta bound is nearly tight
    # Fig. 9b: L(P^c,h) = -log(p_c - eps)
    assert T.losses_from_epsilon(0.0, k, pc, pn)[0] == pytest.approx(2.9)
    assert T.losses_from_epsilon(e, k, pc, pn)[0] == pytest.approx(2.95411, abs=1e-5)
    assert T.losses_from_epsilon(2 * e, k, pc, pn)[0] == pytest.approx(3.01132, abs=1e-5)
    # D.3 says "an increase of no more than 0.1"; the 2*eta bound allows 0.111 (tight value 0.1109)
    assert prop.clean_loss_increase_upper == pytest.approx(0.11132, abs=1e-5)
    assert prop.clean_loss_increase_upper_exact == pytest.approx(0.11092, abs=1e-5)
    assert prop.clean_loss_increase_optimum == pytest.approx(0.05411, abs=1e-5)


def test_predicted_increase_examples():
    # uniform noise over GPT-2's vocabulary at 5%, large k: the optimum is unaffected
    assert T.predicted_clean_loss_increase(0.05, 1000, math.exp(-3), 1 / 50257) == 0.0
    got = T.predicted_clean_loss_increase_from_losses(0.55, 2.9, 2.8, k=1.0)
    assert got == pytest.approx(0.11132, abs=1e-5)
    got = T.predicted_clean_loss_increase_from_losses(0.05, 3.0, 10.9, clean_loss=3.05, noise_loss=10.5)
    assert got == T.predicted_clean_loss_increase(
        0.05, T.k_from_losses(3.0, 10.9, 3.05, 10.5), *map(math.exp, (-3.0, -10.9))
    )


# ------------------------------------------------------------------------------- Lemma 1 (exact)
def _loss(joint: np.ndarray, cond_h: np.ndarray) -> float:
    """L(P, h) of Eq. 2 computed the paper's way: E_{x~P_X} E_{w~P(.|x)} [-log p_h(w|x)]."""
    marg = joint.sum(1)
    total = 0.0
    for x in np.flatnonzero(marg > 0):
        cond = joint[x] / marg[x]
        total += marg[x] * float(np.sum(cond * -np.log(cond_h[x])))
    return total


def _random_h(rng, n_x, v):
    logits = rng.normal(size=(n_x, v)) * 2
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_lemma1_brute_force_disjoint_supports(seed):
    rng = np.random.default_rng(seed)
    n_x, v, alpha = 12, 7, rng.uniform(0.01, 0.99)
    pc, pn = np.zeros((n_x, v)), np.zeros((n_x, v))
    pc[:6] = rng.random((6, v)) * (rng.random((6, v)) < 0.6)
    pn[6:] = rng.random((6, v))  # noise prefixes 6..11, clean prefixes 0..5: Assumption 1
    pc, pn = pc / pc.sum(), pn / pn.sum()
    h = _random_h(rng, n_x, v)
    pm = alpha * pn + (1 - alpha) * pc  # Eq. 1
    assert _loss(pm, h) == pytest.approx(T.lemma1_mixed_loss(alpha, _loss(pn, h), _loss(pc, h)), rel=1e-12)


def test_lemma1_also_holds_without_assumption_1():
    # L(P, h) = sum_{x,w} P(x,w) (-log p_h(w|x)) is linear in the joint P, so the identity holds for
    # overlapping supports too (docs/theory.md); only Eqs. 9-10 individually need disjointness.
    rng = np.random.default_rng(7)
    n_x, v, alpha = 5, 6, 0.3
    pc, pn = rng.random((n_x, v)), rng.random((n_x, v))  # same prefixes: supports overlap everywhere
    pc, pn = pc / pc.sum(), pn / pn.sum()
    h = _random_h(rng, n_x, v)
    pm = alpha * pn + (1 - alpha) * pc
    assert _loss(pm, h) == pytest.approx(alpha * _loss(pn, h) + (1 - alpha) * _loss(pc, h), rel=1e-12)
    # ... while the per-part identity Eq. 9 fails: sum_x P^c_X(x) E_{w~P^m(.|x)}[...] != L(P^c, h)
    eq9_lhs = sum(pc.sum(1)[x] * float(np.sum(pm[x] / pm[x].sum() * -np.log(h[x]))) for x in range(n_x))
    assert abs(eq9_lhs - _loss(pc, h)) > 1e-3


# ------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_open_unit_interval(alpha):
    with pytest.raises(NoisyLMError, match="alpha"):
        T.eta(alpha, 1.0, 0.1, 0.01)
    with pytest.raises(NoisyLMError, match="alpha"):
        T.proposition1(alpha, 1.0, 0.1, 0.01)


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.5, float("nan")])
def test_non_positive_or_invalid_probabilities(bad):
    with pytest.raises(NoisyLMError, match="p_c"):
        T.proposition1(0.1, 1.0, bad, 0.01)
    with pytest.raises(NoisyLMError, match="p_n"):
        T.alpha_threshold(1.0, 0.1, bad)


@pytest.mark.parametrize("k", [0.0, -1.0, float("inf")])
def test_bad_k(k):
    with pytest.raises(NoisyLMError, match="k="):
        T.eta(0.1, k, 0.1, 0.01)


def test_epsilon_at_or_above_p_c():
    with pytest.raises(NoisyLMError, match="epsilon"):
        T.f_gap(0.1, 0.1, 1.0, 0.1, 0.01)
    with pytest.raises(NoisyLMError, match="epsilon"):
        T.losses_from_epsilon(0.2, 1.0, 0.1, 0.01)
    with pytest.raises(NoisyLMError, match="epsilon"):
        T.mixed_loss(np.array([0.01, 0.1]), 0.1, 1.0, 0.1, 0.01)
    assert T.clean_loss_increase(0.1, 0.1) == math.inf


def test_k_undefined_when_noisy_model_is_not_worse():
    with pytest.raises(NoisyLMError, match="not worse on clean"):
        T.k_from_losses(3.0, 10.9, 2.99, 10.5)
    with pytest.raises(NoisyLMError, match="does not fit the noise"):
        T.k_from_losses(3.0, 10.9, 3.05, 11.0)
    with pytest.raises(NoisyLMError, match="loss"):
        T.k_from_losses(3.0, float("inf"), 3.05, 10.5)
    with pytest.raises(NoisyLMError, match="kind"):
        T.predicted_clean_loss_increase(0.1, 1, 0.1, 0.01, kind="median")
    with pytest.raises(NoisyLMError, match="pass k"):
        T.predicted_clean_loss_increase_from_losses(0.1, 3.0, 10.0)
