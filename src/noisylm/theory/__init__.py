"""Why: Proposition 1 and Lemma 1 as executable code, confronted with measured runs.

`formulas` (the paper's Sec. 3.3 and App. B as pure float64 functions) → `measure` (k and ε measured on
a sweep's checkpoints, Lemma 1 on shards, predicted vs measured, the report section).
"""

# Eager on purpose: a lazy __getattr__ would be shadowed by the submodule of the same name
# (`noisylm.data.preparation` the function, not the module) once that submodule is imported.

from noisylm.theory.formulas import (
    Proposition1,
    alpha_threshold,
    clean_loss_increase,
    epsilon_from_losses,
    epsilon_over_k_from_losses,
    eta,
    f_gap,
    f_gap_derivative,
    f_maximiser,
    harmful_epsilon_limit,
    k_from_losses,
    k_lower_bound,
    k_threshold_2eta,
    k_threshold_3eta,
    lemma1_mixed_loss,
    loss_from_prob,
    losses_from_epsilon,
    mixed_loss,
    predicted_clean_loss_increase,
    predicted_clean_loss_increase_from_losses,
    prob_from_loss,
    proposition1,
)
from noisylm.theory.measure import TheoryConfig, theory

__all__ = [
    "prob_from_loss",
    "loss_from_prob",
    "epsilon_from_losses",
    "epsilon_over_k_from_losses",
    "k_from_losses",
    "k_lower_bound",
    "losses_from_epsilon",
    "eta",
    "alpha_threshold",
    "f_gap",
    "f_gap_derivative",
    "mixed_loss",
    "lemma1_mixed_loss",
    "f_maximiser",
    "harmful_epsilon_limit",
    "k_threshold_3eta",
    "k_threshold_2eta",
    "clean_loss_increase",
    "Proposition1",
    "proposition1",
    "predicted_clean_loss_increase",
    "predicted_clean_loss_increase_from_losses",
    "TheoryConfig",
    "theory",
]
