"""Why: Proposition 1 and Lemma 1 as executable code, confronted with measured runs.

`formulas` (the paper's Sec. 3.3 and App. B as pure float64 functions); for `noisylm theory SWEEP_DIR`:
`config` (`TheoryConfig`) → `runs` (reading the sweep) → `measure` (k and ε measured on its checkpoints,
predicted vs measured) and `lemma1` (Lemma 1 on the real mixed shards) → `figures` (Figs. 7a, 7b, 9) →
`section` (tables, the report section, the `theory` entry point).
"""

# Eager on purpose: with a lazy __getattr__, importing a submodule would set the package attribute of
# that name first. Modules are also named unlike the functions they export (`preparation` -> `prepare`).

from noisylm.theory.config import TheoryConfig
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
from noisylm.theory.section import theory

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
