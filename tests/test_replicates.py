"""Replicates: the grid and its seeds, paired differences and their t interval (checked by brute force)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from noisylm.errors import UsageError
from noisylm.experiments import SweepConfig, SweepDir, sweep
from noisylm.experiments.replicates import paired_interval

pytest_plugins = ["sweep_fixtures"]


def _t_quantile_by_integration(p: float, dof: int) -> float:
    """Student's t quantile from its density (gamma functions), integrated by the trapezoid rule and
    inverted by bisection: independent of scipy."""
    c = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 20001)
        density = c * (1 + grid**2 / dof) ** (-(dof + 1) / 2)
        return 0.5 + float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid)))

    low, high = 0.0, 50.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("values", [[0.01, 0.02, 0.015], [-0.3, 0.1, 0.4, 0.05, 0.2], [1.0, 1.0]])
def test_interval_matches_the_t_formula_by_brute_force(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile_by_integration(0.975, n - 1) * sd / math.sqrt(n)
    stat = paired_interval(values)
    assert stat.n == n and stat.mean == pytest.approx(mean)
    assert stat.low == pytest.approx(mean - half, abs=1e-6) and stat.high == pytest.approx(
        mean + half, abs=1e-6
    )
    assert stat.within_noise == (mean - half <= 0 <= mean + half)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials = 4000
    covered = sum(
        (s := paired_interval(rng.normal(0.3, 2.0, size=4))).low <= 0.3 <= s.high for _ in range(trials)
    )
    assert abs(covered / trials - 0.95) < 0.015


def test_one_replicate_has_no_interval():
    stat = paired_interval([0.012])
    assert (stat.low, stat.high, stat.within_noise) == (None, None, None)
    assert "1 replicate: no interval" in stat.describe()
    with pytest.raises(ValueError):
        paired_interval([])


def test_grid_names_and_seeds_of_replicates():
    base = dict(name="r", data="x", noise=[{"kind": "uniform", "alphas": [0.05]}], train={"data_seed": 7})
    assert [r.name for r in SweepConfig(**base).grid()] == ["clean", "uniform-a0.05"]
    grid = SweepConfig(**base, replicates=3).grid()
    assert [r.name for r in grid] == [
        "clean",
        "uniform-a0.05",
        "clean-r1",
        "uniform-a0.05-r1",
        "clean-r2",
        "uniform-a0.05-r2",
    ]
    assert [r.replicate for r in grid] == [0, 0, 1, 1, 2, 2]
    # Every replicate of a grid point trains on the same shard set.
    assert {r.data for r in grid if r.kind} == {"data/uniform-a0.05"}
    with pytest.raises(UsageError, match="replicates"):
        SweepConfig(**base, replicates=0)


@pytest.fixture(scope="module")
def replicated_sweep(tmp_path_factory, shakespeare_bytes, python_docs_bytes):
    from sweep_fixtures import TINY_TRAIN

    config = SweepConfig(
        name="reps",
        data=str(shakespeare_bytes),
        noise=[{"kind": "uniform", "alphas": [0.2]}, {"kind": "gaussian", "alphas": [0.2]}],
        train={**TINY_TRAIN, "max_iters": 8},
        replicates=2,
    )
    out = tmp_path_factory.mktemp("reps") / "sweep"
    summary = sweep(config, out)
    assert summary["counts"]["finished"] == 6
    return out, summary


def _final_val(run_dir) -> float:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "eval" in m][-1]["eval"]["val"]


def test_replicates_train_with_shifted_seeds_and_pair_with_their_clean_run(replicated_sweep):
    out, summary = replicated_sweep
    view = SweepDir.open(out)
    assert view.replicates == 2 and view.points == ["clean", "uniform-a0.2", "gaussian-a0.2"]
    assert [r.replicate for r in view.runs] == [0, 0, 0, 1, 1, 1]
    assert view.clean_of(view.run("uniform-a0.2-r1")).name == "clean-r1"
    config0 = json.loads((out / "configs" / "uniform-a0.2.json").read_text())
    config1 = json.loads((out / "configs" / "uniform-a0.2-r1.json").read_text())
    assert (config0["seed"], config1["seed"]) == (1337, 1338) and config0["data"] == config1["data"]
    # The replicates are different trainings.
    assert _final_val(out / "runs" / "clean") != _final_val(out / "runs" / "clean-r1")

    rows = {(r["comparison"], r["measure"]): r for r in summary["differences"]}
    same_iter = rows[("uniform-a0.2 vs clean", "clean val loss, relative increase (same iteration)")]
    expected = [
        (_final_val(out / "runs" / noisy) - _final_val(out / "runs" / clean))
        / _final_val(out / "runs" / clean)
        for noisy, clean in [("uniform-a0.2", "clean"), ("uniform-a0.2-r1", "clean-r1")]
    ]
    assert same_iter["values"] == pytest.approx(expected)
    assert same_iter["mean"] == pytest.approx(sum(expected) / 2) and same_iter["n"] == 2
    assert same_iter["low"] < same_iter["mean"] < same_iter["high"]
    kinds = rows[("gaussian-a0.2 vs uniform-a0.2", "clean val loss difference, relative to clean")]
    assert kinds["values"][1] == pytest.approx(
        (_final_val(out / "runs" / "gaussian-a0.2-r1") - _final_val(out / "runs" / "uniform-a0.2-r1"))
        / _final_val(out / "runs" / "clean-r1")
    )
    assert ("uniform-a0.2 vs clean", "clean val loss, relative increase (same clean tokens)") in rows
    # Each run's own row is against the clean run of its replicate.
    by_name = {r["name"]: r for r in summary["runs"]}
    assert by_name["uniform-a0.2-r1"]["val_increase_rel"] == pytest.approx(expected[1])
    markdown = (out / "summary.md").read_text()
    assert "Paired differences over replicates (2 replicates)" in markdown
    assert "within noise" in markdown or "0 outside" in markdown


def test_report_has_the_differences_table(replicated_sweep, tmp_path):
    import shutil

    from noisylm.experiments import report

    out = tmp_path / "copy"
    shutil.copytree(replicated_sweep[0], out)
    folder = report(out)
    table = (folder / "replicates" / "differences.md").read_text()
    assert "gaussian-a0.2 vs uniform-a0.2" in table and "95%" in table
    assert "Paired differences over replicates" in (folder / "index.html").read_text()


def test_one_replicate_summary_says_no_interval(finished_sweep):
    markdown = (finished_sweep / "summary.md").read_text()
    assert "1 replicate: no interval" in markdown
