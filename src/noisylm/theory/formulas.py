"""Proposition 1 and Lemma 1 of the paper as pure float64 functions (Sec. 3.3, Appendix B.2–B.3).

Notation (paper, Appendix A): ``h*`` is a model trained on the clean distribution P^c, ``h`` one trained
on the mixture P^m = α·P^n + (1−α)·P^c (Eq. 1). Losses are mean next-token cross-entropies in nats.

    p_c = exp(−L(P^c, h*)),  p_n = exp(−L(P^n, h*))                       (Prop. 1)
    L(P^c, h) = −log(p_c − ε),  L(P^n, h) = −log(p_n + ε/k),  0 < ε < p_c   (Prop. 1)
    η  = α·p_c − (1−α)·k·p_n                                                (Prop. 1)
    α* = k·p_n / (p_c + k·p_n)       (η ≤ 0  ⇔  α ≤ α*)                     (Prop. 1 (1)/(2))
    f(ε) = L(P^m, h*) − L(P^m, h) = (1−α)·log((p_c−ε)/p_c) + α·log((p_n+ε/k)/p_n)   (Eq. 17)
    f'(ε) = (η − ε) / ((p_c − ε)(k·p_n + ε))                                (Eq. 18)

f is strictly concave on (0, p_c) with f(0) = 0, so the hypothesis of the family that is best on P^m has
ε = max(η, 0) exactly, and the hypotheses that beat h* on P^m are those with 0 < ε < ε₀, where ε₀ is the
root of f in (η, p_c) (`harmful_epsilon_limit`). The paper bounds ε₀ by 3η (α < 1/3) or 2η (α > 1/2)
under conditions on k (Prop. 1 (3)); `proposition1` says which statement applies.

Several printed formulas of Appendix B.2 have typos (Eqs. 11–13, 15, 19, 22–23, 29; the text of D.3);
this module implements the corrected mathematics and ``docs/theory.md`` lists each discrepancy with a
counter-example. Every function validates its inputs and raises `NoisyLMError` with one line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq

from noisylm.errors import NoisyLMError

__all__ = [
    "Proposition1",
    "alpha_threshold",
    "clean_loss_increase",
    "epsilon_from_losses",
    "epsilon_over_k_from_losses",
    "eta",
    "f_gap",
    "f_gap_derivative",
    "f_maximiser",
    "harmful_epsilon_limit",
    "k_from_losses",
    "k_lower_bound",
    "k_threshold_2eta",
    "k_threshold_3eta",
    "lemma1_mixed_loss",
    "loss_from_prob",
    "losses_from_epsilon",
    "mixed_loss",
    "predicted_clean_loss_increase",
    "predicted_clean_loss_increase_from_losses",
    "prob_from_loss",
    "proposition1",
]


# ---------------------------------------------------------------------------------------------- checks
def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise NoisyLMError(
            f"noise proportion alpha={alpha!r} must lie strictly inside (0, 1); pass e.g. 0.05"
        )
    return alpha


def _check_prob(value: float, name: str) -> float:
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise NoisyLMError(
            f"{name}={value!r} must be a probability in (0, 1]; pass exp(-loss) of a finite loss"
        )
    return value


def _check_k(k: float) -> float:
    k = float(k)
    if not (k > 0.0 and math.isfinite(k)):
        raise NoisyLMError(f"k={k!r} must be a positive finite number; estimate it with k_from_losses")
    return k


def _check_loss(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise NoisyLMError(f"{name}={value!r} must be a finite non-negative loss in nats; check the eval")
    return value


def _check_epsilon(epsilon: Any, p_c: float) -> np.ndarray:
    eps = np.asarray(epsilon, dtype=np.float64)
    if not np.all(np.isfinite(eps)) or np.any(eps < 0.0) or np.any(eps >= p_c):
        raise NoisyLMError(
            f"epsilon must satisfy 0 <= epsilon < p_c={p_c:.6g} (got min {eps.min():.6g}, "
            f"max {eps.max():.6g}); the clean probability p_c - epsilon must stay positive"
        )
    return eps


def _params(alpha: float, k: float, p_c: float, p_n: float) -> tuple[float, float, float, float]:
    return _check_alpha(alpha), _check_k(k), _check_prob(p_c, "p_c"), _check_prob(p_n, "p_n")


def _scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    return float(x) if x.ndim == 0 else x


# -------------------------------------------------------------------------------- losses <-> probs
def prob_from_loss(loss: float) -> float:
    """p = exp(−L): the 'probability' Prop. 1 attaches to a loss (p_c = exp(−L(P^c, h*)) etc.)."""
    return math.exp(-_check_loss(loss, "loss"))


def loss_from_prob(p: float) -> float:
    """L = −log p, the inverse of `prob_from_loss`."""
    return -math.log(_check_prob(p, "p"))


def epsilon_from_losses(clean_loss_ref: float, clean_loss: float) -> float:
    """ε of Eq. (11): ε = exp(−L(P^c, h*)) − exp(−L(P^c, h)).

    Positive when the noisy model h is worse than h* on clean text. (The printed middle expression of
    Eq. 11, 1/e^{L(P^c,h)} − 1/e^{L(P^c,h*)}, has the opposite sign; its right-hand side is correct.)
    """
    ref, loss = _check_loss(clean_loss_ref, "clean_loss_ref"), _check_loss(clean_loss, "clean_loss")
    return -math.exp(-ref) * math.expm1(ref - loss)  # = e^{-ref} - e^{-loss}, accurate for small gaps


def epsilon_over_k_from_losses(noise_loss_ref: float, noise_loss: float) -> float:
    """ε/k of Eq. (12): ε/k = exp(−L(P^n, h)) − exp(−L(P^n, h*)).

    Positive when h fits the noise better than h*. (The printed right-hand side of Eq. 12,
    (e^{L(P^n,h)−L(P^n,h*)} − 1)/e^{L(P^n,h)}, equals −ε/k.)
    """
    ref, loss = _check_loss(noise_loss_ref, "noise_loss_ref"), _check_loss(noise_loss, "noise_loss")
    return -math.exp(-loss) * math.expm1(loss - ref)  # = e^{-loss} - e^{-ref}


def k_from_losses(
    clean_loss_ref: float, noise_loss_ref: float, clean_loss: float, noise_loss: float
) -> float:
    """k = ε / (ε/k) (Eqs. 11–13, corrected) from the four losses of h* (ref) and h.

    Equivalently k = e^{L(P^n,h) − L(P^c,h)} · (e^{L(P^c,h) − L(P^c,h*)} − 1)
                     / (1 − e^{L(P^n,h) − L(P^n,h*)}).
    Requires ε > 0 (h worse on clean) and ε/k > 0 (h better on noise), as Prop. 1 assumes; otherwise k
    is not defined and a `NoisyLMError` says which condition failed.
    """
    eps = epsilon_from_losses(clean_loss_ref, clean_loss)
    eps_k = epsilon_over_k_from_losses(noise_loss_ref, noise_loss)
    if eps <= 0.0:
        raise NoisyLMError(
            f"k is undefined: the noisy model is not worse on clean text (L(P^c,h)={clean_loss:.6g} <= "
            f"L(P^c,h*)={clean_loss_ref:.6g}, epsilon={eps:.3g}); Prop. 1 needs epsilon > 0"
        )
    if eps_k <= 0.0:
        raise NoisyLMError(
            f"k is undefined: the noisy model does not fit the noise better (L(P^n,h)={noise_loss:.6g} >= "
            f"L(P^n,h*)={noise_loss_ref:.6g}); Prop. 1 needs epsilon/k > 0"
        )
    return eps / eps_k


def k_lower_bound(clean_loss_ref: float, clean_loss: float, noise_loss: float) -> float:
    """The lower bound of Eq. (13): k > e^{L(P^n,h)} · (L(P^c,h) − L(P^c,h*)) / e^{L(P^c,h)}.

    The bound printed at the end of Eq. 13 is correct (given ε > 0 and ε/k > 0); it follows from
    e^x − 1 > x and 1 − e^{−δ} < 1. The two intermediate lines printed in Eq. 13 are not (see
    docs/theory.md). The bound shows k = Ω(e^{L(P^n,h)}) with a constant that only depends on P^c, h, h*.
    """
    clean_loss_ref = _check_loss(clean_loss_ref, "clean_loss_ref")
    clean_loss = _check_loss(clean_loss, "clean_loss")
    noise_loss = _check_loss(noise_loss, "noise_loss")
    return math.exp(noise_loss - clean_loss) * (clean_loss - clean_loss_ref)


def losses_from_epsilon(epsilon: float, k: float, p_c: float, p_n: float) -> tuple[float, float]:
    """(L(P^c, h), L(P^n, h)) = (−log(p_c − ε), −log(p_n + ε/k)) — the parametrisation of Prop. 1."""
    k, p_c, p_n = _check_k(k), _check_prob(p_c, "p_c"), _check_prob(p_n, "p_n")
    eps = float(_check_epsilon(epsilon, p_c))
    if p_n + eps / k > 1.0:
        raise NoisyLMError(
            f"p_n + epsilon/k = {p_n + eps / k:.6g} exceeds 1; use a smaller epsilon or a larger k"
        )
    return -math.log(p_c - eps), -math.log(p_n + eps / k)


# ------------------------------------------------------------------------------------ Proposition 1
def eta(alpha: float, k: float, p_c: float, p_n: float) -> float:
    """η = α·p_c − (1 − α)·k·p_n (Prop. 1): the ε at which L(P^m, h) is smallest (when η > 0)."""
    alpha, k, p_c, p_n = _params(alpha, k, p_c, p_n)
    return _eta(alpha, k, p_c, p_n)


def _eta(alpha: float, k: float, p_c: float, p_n: float) -> float:
    a, b = alpha * p_c, (1.0 - alpha) * k * p_n
    # At α = α* the two terms cancel; snap rounding residue to 0 so that η ≤ 0 ⇔ α ≤ α* holds in floats.
    return 0.0 if abs(a - b) <= 8 * np.finfo(float).eps * (a + b) else a - b


def alpha_threshold(k: float, p_c: float, p_n: float) -> float:
    """α* = k·p_n / (p_c + k·p_n) (Prop. 1 (1)): for α ≤ α* noise does not move the optimum (η ≤ 0)."""
    k, p_c, p_n = _check_k(k), _check_prob(p_c, "p_c"), _check_prob(p_n, "p_n")
    return k * p_n / (p_c + k * p_n)


def f_gap(epsilon: Any, alpha: float, k: float, p_c: float, p_n: float) -> float | np.ndarray:
    """f(ε) = L(P^m, h*) − L(P^m, h) (Eq. 17); positive means h beats h* on the mixture.

    Vectorised over ``epsilon`` (0 ≤ ε < p_c); uses log1p for accuracy at small ε.
    """
    alpha, k, p_c, p_n = _params(alpha, k, p_c, p_n)
    eps = _check_epsilon(epsilon, p_c)
    out = (1.0 - alpha) * np.log1p(-eps / p_c) + alpha * np.log1p(eps / (k * p_n))
    return _scalar_or_array(out)


def f_gap_derivative(epsilon: Any, alpha: float, k: float, p_c: float, p_n: float) -> float | np.ndarray:
    """f'(ε) = (η − ε) / ((p_c − ε)(k·p_n + ε)) (Eq. 18)."""
    alpha, k, p_c, p_n = _params(alpha, k, p_c, p_n)
    eps = _check_epsilon(epsilon, p_c)
    e = _eta(alpha, k, p_c, p_n)
    return _scalar_or_array((e - eps) / ((p_c - eps) * (k * p_n + eps)))


def mixed_loss(epsilon: Any, alpha: float, k: float, p_c: float, p_n: float) -> float | np.ndarray:
    """L(P^m, h) = (1−α)·(−log(p_c − ε)) + α·(−log(p_n + ε/k)) (Lemma 1 with Prop. 1's parametrisation).

    This is the curve of Fig. 7(b); at ε = 0 it is L(P^m, h*).
    """
    alpha, k, p_c, p_n = _params(alpha, k, p_c, p_n)
    eps = _check_epsilon(epsilon, p_c)
    out = -(1.0 - alpha) * np.log(p_c - eps) - alpha * np.log(p_n + eps / k)
    return _scalar_or_array(out)


def lemma1_mixed_loss(alpha: float, noise_loss: float, clean_loss: float) -> float:
    """Lemma 1: L(P^m, h) = α·L(P^n, h) + (1 − α)·L(P^c, h), exact under Assumption 1 (disjoint supports)."""
    alpha = _check_alpha(alpha)
    return alpha * _check_loss(noise_loss, "noise_loss") + (1.0 - alpha) * _check_loss(
        clean_loss, "clean_loss"
    )


def f_maximiser(alpha: float, k: float, p_c: float, p_n: float) -> tuple[float, float]:
    """(ε̂, f(ε̂)): the maximiser of f on [0, p_c) and its value, i.e. the P^m-optimal ε of the family.

    From Eq. 18, f' has the sign of η − ε and f is strictly concave, so ε̂ = max(η, 0).
    """
    e = eta(alpha, k, p_c, p_n)
    eps_hat = max(e, 0.0)
    return eps_hat, float(f_gap(eps_hat, alpha, k, p_c, p_n))


def harmful_epsilon_limit(alpha: float, k: float, p_c: float, p_n: float) -> float:
    """ε₀: the exact supremum of the ε for which h is at least as good as h* on P^m (f(ε) ≥ 0).

    0 when η ≤ 0 (statement (1)); otherwise the unique root of f in (η, p_c) (f(η) > 0, f → −∞ as ε → p_c).
    Statement (3) of Prop. 1 bounds this by 3η or 2η; this is the tight value.
    """
    alpha, k, p_c, p_n = _params(alpha, k, p_c, p_n)
    e = _eta(alpha, k, p_c, p_n)
    if e <= 0.0:
        return 0.0

    def f(x: float) -> float:
        return (1.0 - alpha) * math.log1p(-x / p_c) + alpha * math.log1p(x / (k * p_n))

    hi = p_c * (1.0 - 1e-15)
    if f(hi) >= 0.0:  # only when f stays non-negative to float precision
        return hi
    return float(brentq(f, e, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500))


def k_threshold_3eta(alpha: float, p_c: float, p_n: float) -> float:
    """k above which ε ≤ 3η holds for α < 1/3 (Prop. 1 (3)): α(1−3α)p_c / ((1−α)(2−3α)p_n)."""
    alpha, p_c, p_n = _check_alpha(alpha), _check_prob(p_c, "p_c"), _check_prob(p_n, "p_n")
    if alpha >= 1.0 / 3.0:
        raise NoisyLMError(f"the 3*eta statement needs alpha < 1/3 (got {alpha}); use k_threshold_2eta")
    return alpha * (1.0 - 3.0 * alpha) * p_c / ((1.0 - alpha) * (2.0 - 3.0 * alpha) * p_n)


def k_threshold_2eta(alpha: float, p_c: float, p_n: float) -> float:
    """k above which ε ≤ 2η holds for α > 1/2 (Prop. 1 (3)): (2α−1)p_c / (2(1−α)p_n).

    Below this k, 2η ≥ p_c, so ε < p_c ≤ 2η holds trivially: the k condition only makes the bound useful.
    """
    alpha, p_c, p_n = _check_alpha(alpha), _check_prob(p_c, "p_c"), _check_prob(p_n, "p_n")
    if alpha <= 0.5:
        raise NoisyLMError(f"the 2*eta statement needs alpha > 1/2 (got {alpha}); use k_threshold_3eta")
    return (2.0 * alpha - 1.0) * p_c / (2.0 * (1.0 - alpha) * p_n)


def clean_loss_increase(epsilon: float, p_c: float) -> float:
    """L(P^c, h) − L(P^c, h*) = −log(1 − ε/p_c); +inf when ε ≥ p_c (no bound)."""
    p_c = _check_prob(p_c, "p_c")
    epsilon = float(epsilon)
    if math.isnan(epsilon) or epsilon < 0.0:
        raise NoisyLMError(f"epsilon={epsilon!r} must be >= 0; it is a drop in the clean probability")
    if epsilon >= p_c:
        return math.inf
    return -math.log1p(-epsilon / p_c)


@dataclass(frozen=True)
class Proposition1:
    """What Proposition 1 says for one (α, k, p_c, p_n).

    statement: "1" (η ≤ 0: h* stays optimal on P^m), "3a" (α < 1/3, k above threshold: ε ≤ 3η),
        "3b" (α > 1/2, η > 0, k above threshold: ε ≤ 2η), or "2" (η > 0, no closed-form upper bound).
        Statement (2) (ε of the optimum ≥ η; every 0 < ε < η beats h*) holds whenever η > 0.
    eta, alpha_star: η and α* of Prop. 1.
    epsilon_optimum: max(η, 0), the ε of the P^m-optimal hypothesis of the family (argmax of Eq. 17).
    epsilon_lower: the lower bound of statement (2) (η), None under statement (1).
    epsilon_upper: the upper bound the applying statement gives (0, 3η or 2η), None if none does.
    epsilon_upper_exact: ε₀ of `harmful_epsilon_limit` (tight; always defined).
    k_threshold: the k above which statement (3) applies for this α (None for 1/3 ≤ α ≤ 1/2).
    clean_loss_increase_optimum / _upper / _upper_exact: −log(1 − ε/p_c) at those ε, in nats
        (None when the ε is None; inf when ε ≥ p_c).
    """

    alpha: float
    k: float
    p_c: float
    p_n: float
    statement: str
    eta: float
    alpha_star: float
    epsilon_optimum: float
    epsilon_lower: float | None
    epsilon_upper: float | None
    epsilon_upper_exact: float
    k_threshold: float | None
    clean_loss_increase_optimum: float
    clean_loss_increase_upper: float | None
    clean_loss_increase_upper_exact: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One human-readable line (used in reports)."""
        if self.statement == "1":
            return f"(1) eta={self.eta:.3g} <= 0: noise does not move the optimum (epsilon = 0)"
        bound = {"3a": "<= 3*eta", "3b": "<= 2*eta"}.get(self.statement, "no closed-form upper bound")
        return f"({self.statement}) eta={self.eta:.3g} > 0: epsilon >= eta, epsilon {bound}"


def proposition1(alpha: float, k: float, p_c: float, p_n: float) -> Proposition1:
    """Which statement of Proposition 1 applies for (α, k, p_c, p_n), with its bounds on ε and on the
    clean-loss increase L(P^c, h) − L(P^c, h*) it implies (see `Proposition1`)."""
    alpha, k, p_c, p_n = _params(alpha, k, p_c, p_n)
    e = eta(alpha, k, p_c, p_n)
    k_thr: float | None = None
    if alpha < 1.0 / 3.0:
        k_thr = k_threshold_3eta(alpha, p_c, p_n)
    elif alpha > 0.5:
        k_thr = k_threshold_2eta(alpha, p_c, p_n)
    lower: float | None = None
    upper: float | None
    if e <= 0.0:
        statement, upper = "1", 0.0
    else:
        lower = e
        if alpha < 1.0 / 3.0 and k > k_thr:
            statement, upper = "3a", 3.0 * e
        elif alpha > 0.5 and k > k_thr:
            statement, upper = "3b", 2.0 * e
        else:
            statement, upper = "2", None
    eps_opt = max(e, 0.0)
    exact = harmful_epsilon_limit(alpha, k, p_c, p_n)
    return Proposition1(
        alpha=alpha,
        k=k,
        p_c=p_c,
        p_n=p_n,
        statement=statement,
        eta=e,
        alpha_star=alpha_threshold(k, p_c, p_n),
        epsilon_optimum=eps_opt,
        epsilon_lower=lower,
        epsilon_upper=upper,
        epsilon_upper_exact=exact,
        k_threshold=k_thr,
        clean_loss_increase_optimum=clean_loss_increase(eps_opt, p_c),
        clean_loss_increase_upper=None if upper is None else clean_loss_increase(upper, p_c),
        clean_loss_increase_upper_exact=clean_loss_increase(exact, p_c),
    )


def predicted_clean_loss_increase(
    alpha: float, k: float, p_c: float, p_n: float, kind: str = "bound"
) -> float:
    """Predicted increase of the clean loss, L(P^c, h) − L(P^c, h*) in nats, if noise at proportion α
    is kept in the training data (Prop. 1). For the Scan stage: "is filtering this noise worth it?".

    kind:
      "bound"   — the largest increase Prop. 1 allows: −log(1 − ε_max/p_c), with ε_max = 0 (statement 1),
                  3η (3a), 2η (3b), or the tight ε₀ where no closed-form statement applies (2).
      "optimum" — the increase at the P^m-optimal ε = max(η, 0) (the model's expected value).
      "exact"   — the tight bound from ε₀ (root of Eq. 17), never larger than "bound".

    Example: α = 0.05 of uniform noise over GPT-2's vocabulary (p_n ≈ 1/50257), p_c = e^{−3}, k = 1000
    gives 0.0 (statement 1: the optimum is unaffected).
    """
    prop = proposition1(alpha, k, p_c, p_n)
    if kind == "optimum":
        return prop.clean_loss_increase_optimum
    if kind == "exact":
        return prop.clean_loss_increase_upper_exact
    if kind == "bound":
        if prop.clean_loss_increase_upper is None:
            return prop.clean_loss_increase_upper_exact
        return prop.clean_loss_increase_upper
    raise NoisyLMError(f"unknown kind {kind!r}; use 'bound', 'optimum' or 'exact'")


def predicted_clean_loss_increase_from_losses(
    alpha: float,
    clean_loss_ref: float,
    noise_loss_ref: float,
    clean_loss: float | None = None,
    noise_loss: float | None = None,
    k: float | None = None,
    kind: str = "bound",
) -> float:
    """`predicted_clean_loss_increase` from measured losses: p_c, p_n from h* (clean model) and k either
    given or estimated by `k_from_losses` from an (early) noisy model h's clean and noise losses."""
    if k is None:
        if clean_loss is None or noise_loss is None:
            raise NoisyLMError("pass k, or both clean_loss and noise_loss of the noisy model to estimate it")
        k = k_from_losses(clean_loss_ref, noise_loss_ref, clean_loss, noise_loss)
    p_c = prob_from_loss(clean_loss_ref)
    p_n = prob_from_loss(noise_loss_ref)
    return predicted_clean_loss_increase(alpha, k, p_c, p_n, kind=kind)
