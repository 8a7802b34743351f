"""What keeping the flagged noise would cost: Proposition 1 (`noisylm.theory.formulas`) at α̂."""

from __future__ import annotations

import math
from typing import Any

PAPER_RELATIVE_INCREASE = 0.002 / 0.05  # the paper (Sec. 3.2): 5% random noise -> +0.2% clean NTP loss
K_GRID = (10.0, 100.0, 1000.0, 10000.0)


def predict_cost(
    alpha_hat: float, clean_loss: float, noise_loss: float, k: float, basis: str
) -> dict[str, Any]:
    """Prop. 1 (via `noisylm.theory.formulas`) at α̂: the clean-loss increase if the noise is kept.

    p_c = exp(−clean_loss), p_n = exp(−noise_loss) (losses of the model, or of the clean unigram model
    when no model is given: ``basis`` says which); k is not measurable from one corpus, so the
    prediction is given for ``k`` and for a grid of k.
    """
    from noisylm.theory import formulas as theory

    out: dict[str, Any] = {
        "alpha_hat": alpha_hat,
        "clean_loss": clean_loss,
        "noise_loss": noise_loss,
        "basis": basis,
        "k": k,
        "paper_rule_of_thumb": {
            "relative_increase_per_alpha": PAPER_RELATIVE_INCREASE,
            "predicted_relative_increase": PAPER_RELATIVE_INCREASE * alpha_hat,
            "source": "paper Sec. 3.2: 5% random noise raised GPT-2 124M's clean loss by 0.2%",
        },
    }
    if not (0.0 < alpha_hat < 1.0 and math.isfinite(clean_loss) and math.isfinite(noise_loss)):
        out.update(increase_nats=0.0, increase_relative=0.0, statement=None, grid=[])
        out["clean_loss"] = clean_loss if math.isfinite(clean_loss) else None
        out["noise_loss"] = noise_loss if math.isfinite(noise_loss) else None
        out["note"] = "no noise flagged: nothing to predict" if alpha_hat == 0 else "all tokens flagged"
        return out
    p_c, p_n = math.exp(-clean_loss), math.exp(-noise_loss)
    grid = []
    for kk in sorted({*K_GRID, float(k)}):
        prop = theory.proposition1(alpha_hat, kk, p_c, p_n)
        bound = theory.predicted_clean_loss_increase(alpha_hat, kk, p_c, p_n, kind="bound")
        optimum = theory.predicted_clean_loss_increase(alpha_hat, kk, p_c, p_n, kind="optimum")
        grid.append(
            {
                "k": kk,
                "statement": prop.statement,
                "eta": prop.eta,
                "alpha_star": prop.alpha_star,
                "increase_optimum_nats": optimum if math.isfinite(optimum) else None,  # inf: no bound
                "increase_bound_nats": bound if math.isfinite(bound) else None,
            }
        )
    headline = next(g for g in grid if g["k"] == float(k))
    out.update(
        statement=headline["statement"],
        increase_nats=headline["increase_optimum_nats"],
        increase_bound_nats=headline["increase_bound_nats"],
        increase_relative=(
            headline["increase_optimum_nats"] / clean_loss
            if clean_loss > 0 and headline["increase_optimum_nats"] is not None
            else None
        ),
        grid=grid,
    )
    return out
