"""The cost of keeping the noise (`noisylm.scan.pricing.predict_cost`) against numbers worked out by hand
in docs/theory.md and the paper's closed forms written out in the test."""

from __future__ import annotations

import math

import pytest

from noisylm.scan.pricing import K_GRID, PAPER_RELATIVE_INCREASE, predict_cost
from scan_helpers import prop1_by_hand


def test_fig9_numbers_by_hand():
    # docs/theory.md, "Figure 9 by hand": α = 0.55, k = 1, L(P^c,h*) = 2.9, L(P^n,h*) = 2.8 → (3b),
    # η = 0.0028982, α* = 0.52498, clean loss 2.9 → 2.9541 at the optimum, ≤ 3.0113 at 2η
    pred = predict_cost(0.55, 2.9, 2.8, 1.0, "hand")
    assert [g["k"] for g in pred["grid"]] == sorted({1.0, *K_GRID})
    head = pred["grid"][0]
    assert pred["statement"] == head["statement"] == "3b"
    assert head["eta"] == pytest.approx(0.0028982, abs=1e-7)
    assert head["alpha_star"] == pytest.approx(0.52498, abs=1e-5)
    assert pred["increase_nats"] == pytest.approx(0.0541, abs=1e-4)
    assert pred["increase_bound_nats"] == pytest.approx(0.1113, abs=1e-4)
    assert pred["increase_relative"] == pytest.approx(0.0541 / 2.9, abs=1e-4)
    for g in pred["grid"][1:]:  # k ≥ 10: (1−α) k p_n > α p_c, η < 0, nothing changes
        assert g["statement"] == "1" and g["increase_optimum_nats"] == 0.0 and g["increase_bound_nats"] == 0.0
    assert pred["paper_rule_of_thumb"]["predicted_relative_increase"] == pytest.approx(0.55 * 0.002 / 0.05)
    assert pytest.approx(0.04) == PAPER_RELATIVE_INCREASE


def test_uniform_noise_over_gpt2_example():
    # docs/theory.md: 5% uniform noise over GPT-2's vocabulary, p_c = e^-3, k = 1000 → statement 1, 0.0
    pred = predict_cost(0.05, 3.0, math.log(50257), 1000.0, "hand")
    assert pred["statement"] == "1" and pred["increase_nats"] == 0.0 and pred["increase_bound_nats"] == 0.0


@pytest.mark.parametrize(
    ("alpha", "clean_loss", "noise_loss"),
    [(0.2, 3.3, 9.0), (0.2, 3.0, 7.4), (0.1, 2.0, 8.0), (0.4, 3.0, 8.0), (0.7, 1.5, 6.0)],
)
def test_grid_follows_the_closed_forms(alpha, clean_loss, noise_loss):
    pred = predict_cost(alpha, clean_loss, noise_loss, 1000.0, "hand")
    p_c, p_n = math.exp(-clean_loss), math.exp(-noise_loss)
    statements = set()
    for g in pred["grid"]:
        hand = prop1_by_hand(alpha, g["k"], p_c, p_n)
        statements.add(hand["statement"])
        assert g["statement"] == hand["statement"]
        assert g["eta"] == pytest.approx(hand["eta"], rel=1e-12, abs=1e-15)
        assert g["alpha_star"] == pytest.approx(hand["alpha_star"], rel=1e-12)
        assert g["increase_optimum_nats"] == pytest.approx(hand["increase_optimum"], rel=1e-9, abs=1e-12)
        if hand["increase_bound"] is None:
            assert g["increase_bound_nats"] is None
        else:
            assert g["increase_bound_nats"] == pytest.approx(hand["increase_bound"], rel=1e-6, abs=1e-12)
    assert len(statements) > 1  # the grid of k crosses a statement boundary


def test_nothing_to_predict():
    none = predict_cost(0.0, 3.0, math.nan, 1000.0, "hand")
    assert none["grid"] == [] and none["increase_nats"] == 0.0 and none["statement"] is None
    assert none["noise_loss"] is None and "no noise flagged" in none["note"]
    assert "all tokens flagged" in predict_cost(1.0, math.nan, 5.0, 1000.0, "hand")["note"]
