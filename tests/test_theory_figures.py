"""The theory section's figures (`noisylm.theory.figures`): Fig. 9's caption against the numbers worked
out by hand in docs/theory.md, and every figure written from hand-made points and rows."""

from __future__ import annotations

import math

from noisylm.theory import figures as Fg
from noisylm.theory.measure import EvalPoint

PNG = b"\x89PNG\r\n\x1a\n"


def test_fig9_caption_numbers(tmp_path):
    name, caption = Fg.fig9(tmp_path)
    assert (tmp_path / name).read_bytes()[:8] == PNG
    # docs/theory.md, "Figure 9 by hand": (3b), 2η = 0.0057965, +0.1113 nats at 2η, +0.0541 at η
    assert "(3b)" in caption and "0.1113" in caption and "0.0541" in caption
    assert math.isclose(float(caption.split("2η = ")[1].split(",")[0]), 0.0057965, abs_tol=5e-6)


def test_figures_from_points_and_rows(tmp_path):
    curves = {"uniform-a0.2": [EvalPoint(10, 3.0, 10.9, 3.05, 10.5), EvalPoint(20, 2.9, 10.8, 2.92, 10.4)]}
    assert Fg.fig7a(tmp_path, curves) == "fig7a.png"
    p_c, p_n = math.exp(-2.9), math.exp(-10.8)
    row = {
        "run": "uniform-a0.2",
        "alpha": 0.2,
        "k": 100.0,
        "p_c": p_c,
        "p_n": p_n,
        "statement": "3a",
        "eta": 0.2 * p_c - 0.8 * 100.0 * p_n,
        "epsilon_bound": 3 * (0.2 * p_c - 0.8 * 100.0 * p_n),
        "measured_epsilon": 0.001,
        "predicted_increase_bound": 0.3,
        "predicted_increase_optimum": 0.1,
        "measured_increase": 0.02,
        "measured_increase_se": 0.005,
    }
    assert Fg.fig7b(tmp_path, [row]) == "fig7b.png"
    assert (
        Fg.fig_predicted(tmp_path, [row, {"run": "x", "note": "k undefined"}]) == "predicted_vs_measured.png"
    )
    for name in ("fig7a.png", "fig7b.png", "predicted_vs_measured.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    # no row with a prediction: no figure
    assert Fg.fig7b(tmp_path / "none", [{"run": "x", "note": "no iteration"}]) is None
    assert Fg.fig_predicted(tmp_path / "none", []) is None
