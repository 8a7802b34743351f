"""Report: every figure and table from a reduced real sweep, numbers checked against the run files,
byte-identical output for the same run directories, the calibrated comparison by hand, index.html."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from noisylm.errors import NoisyLMError
from noisylm.experiments import report, write_index
from noisylm.experiments.comparison import RunCurves, diff_same_clean_tokens, diff_same_iter

pytest_plugins = ["sweep_fixtures"]  # the `finished_sweep` fixture
RUNS = ["clean", "uniform-a0.05", "uniform-a0.2", "gaussian-a0.2"]
FIGURES = [
    "fig2/fig2a.png",
    "fig2/fig2b.png",
    "fig2/fig2c.png",
    "fig3/fig3a.png",
    "fig3/fig3b.png",
    "fig3/fig3c.png",
    "fig4/fig4-docs.png",
    "fig8/fig8.png",
]


@pytest.fixture(scope="module")
def reported(finished_sweep, tmp_path_factory) -> Path:
    """A copy of the reduced sweep with its report written."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    shutil.copytree(finished_sweep, out)
    assert report(out) == out / "report"
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _final_evals(sweep_dir: Path) -> dict[str, dict]:
    finals = {}
    for name in RUNS:
        lines = (sweep_dir / "runs" / name / "metrics.jsonl").read_text().splitlines()
        finals[name] = [m for m in map(json.loads, lines) if "eval" in m][-1]
    return finals


def test_report_writes_every_figure_and_table(reported):
    out = reported / "report"
    for figure in FIGURES:
        image = matplotlib.image.imread(out / figure)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, figure
        assert image[..., :3].std() > 0.01, f"{figure} is blank"
    for table in ("runs/runs", "fig8/fig8"):
        assert (out / f"{table}.md").read_text().count("\n|") >= 2
        assert (out / f"{table}.csv").is_file()
    page = (out / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(FIGURES)
    for title in ("Final numbers per run", "Fig. 2", "Fig. 3", "Fig. 4", "Fig. 8"):
        assert title in page
    assert 'src="http' not in page and 'href="http' not in page  # nothing to fetch: reads offline


def test_run_table_matches_the_run_files(reported):
    rows = {r["run"]: r for r in _csv(reported / "report" / "runs" / "runs.csv")}
    assert list(rows) == RUNS
    finals = _final_evals(reported)
    clean_val = finals["clean"]["eval"]["val"]
    for name in RUNS:
        row, final = rows[name], finals[name]
        val = final["eval"]["val"]
        assert float(row["clean_val_loss"]) == pytest.approx(val, rel=1e-5)
        assert float(row["docs_loss"]) == pytest.approx(final["eval"]["docs"], rel=1e-5)
        assert int(row["iter"]) == 12 and int(row["clean_tokens"]) == final["clean_tokens"]
        if name == "clean":
            assert row["noise_loss"] == "" and row["rel_increase_per_alpha"] == ""
            continue
        alpha = float(row["alpha"])
        assert float(row["abs_increase"]) == pytest.approx(val - clean_val, rel=1e-5, abs=1e-9)
        assert float(row["rel_increase"]) == pytest.approx((val - clean_val) / clean_val, rel=1e-5, abs=1e-9)
        assert float(row["rel_increase_per_alpha"]) == pytest.approx(
            (val - clean_val) / clean_val / alpha, rel=1e-5, abs=1e-9
        )
        assert float(row["noise_loss"]) == pytest.approx(final["eval"]["noise"], rel=1e-5)
        assert final["clean_tokens"] < final["tokens"]  # part of the noisy run's tokens were noise


def test_token_prior_table(reported):
    rows = {r["data"]: r for r in _csv(reported / "report" / "fig8" / "fig8.csv")}
    assert list(rows) == ["clean data", "uniform noise", "gaussian noise"]
    manifest = json.loads((reported / "data" / "uniform-a0.2" / "manifest.json").read_text())
    assert int(rows["uniform noise"]["tokens"]) == manifest["noise"]["noise_tokens"]
    # Uniform noise over the 256 byte ids has entropy ≈ log 256; the Gaussian (sd V/100) far less.
    assert float(rows["uniform noise"]["entropy_nats"]) == pytest.approx(math.log(256), abs=0.01)
    assert float(rows["gaussian noise"]["entropy_nats"]) < 3.0
    assert 3.0 < float(rows["clean data"]["entropy_nats"]) < math.log(256)


def test_report_is_deterministic_for_fixed_run_dirs(finished_sweep, reported, tmp_path):
    other = tmp_path / "elsewhere"
    shutil.copytree(finished_sweep, other)
    report(other)
    report(other)  # twice in place

    def files(root: Path) -> dict[str, bytes]:
        base = root / "report"
        return {
            str(p.relative_to(base)): p.read_bytes()
            for p in sorted(base.rglob("*"))
            if p.is_file() and p.name != "provenance.json"
        }

    first, second = files(reported), files(other)
    assert sorted(first) == sorted(second) and len(first) >= 14
    assert [name for name in first if first[name] != second[name]] == []


def _run(name, kind, alpha, tokens, clean_tokens, val):
    return RunCurves(
        name=name,
        kind=kind,
        alpha=alpha,
        alpha_achieved=alpha,
        iters=np.arange(len(tokens)) * 10,
        tokens=np.array(tokens, dtype=float),
        clean_tokens=np.array(clean_tokens, dtype=float),
        evals={"val": np.array(val, dtype=float)},
        status="finished",
    )


def test_calibrated_difference_by_hand():
    # Clean run: 100 tokens per 10 iterations. The noisy run (α = 0.5) sees half as many clean tokens.
    clean = _run(
        "clean", None, 0.0, [0, 100, 200, 300, 400], [0, 100, 200, 300, 400], [4.0, 3.0, 2.5, 2.2, 2.0]
    )
    noisy = _run(
        "u", "uniform", 0.5, [0, 100, 200, 300, 400], [0, 50, 100, 150, 200], [4.0, 3.4, 3.0, 2.7, 2.45]
    )
    x, diff = diff_same_clean_tokens(noisy, clean)
    # Clean-run loss after 100 / 150 / 200 clean tokens: 3.0, 2.75, 2.5 (linear between its evals); the
    # point at 50 tokens lies in the clean run's first segment (from iteration 0), which is not compared.
    # x counts iterations of clean data: 10 iterations per 100 tokens.
    np.testing.assert_allclose(x, [10, 15, 20])
    np.testing.assert_allclose(diff, [0.0, -0.05, -0.05], atol=1e-12)
    iters, same_iter = diff_same_iter(noisy, clean)
    np.testing.assert_allclose(iters, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(same_iter, [0.0, 0.4, 0.5, 0.5, 0.45], atol=1e-12)


def test_index_shows_other_sections_in_order(reported, tmp_path):
    out = tmp_path / "report"
    shutil.copytree(reported / "report", out)
    theory = out / "theory"
    theory.mkdir()
    shutil.copy(out / "fig2" / "fig2a.png", theory / "k.png")
    (theory / "bounds.md").write_text("Bounds.\n\n| run | bound |\n|---|---|\n| uniform-a0.2 | 0.12 |\n")
    spec = {
        "title": "Theory: Proposition 1 against the runs",
        "order": 60,
        "items": [
            {"type": "figure", "path": "k.png", "caption": "k over training <fig>"},
            {"type": "table", "path": "bounds.md", "caption": "bounds"},
            {"type": "text", "text": "a note"},
        ],
    }
    (theory / "section.json").write_text(json.dumps(spec))
    page = write_index(out).read_text()
    assert page.index("Fig. 8") < page.index("Theory: Proposition 1")
    assert "<td>uniform-a0.2</td><td>0.12</td>" in page and "<p>a note</p>" in page
    assert "k over training &lt;fig&gt;" in page
    assert page.count("data:image/png;base64,") == len(FIGURES) + 1


def test_bad_sweep_dirs(tmp_path, finished_sweep):
    with pytest.raises(NoisyLMError, match="not a sweep directory"):
        report(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(finished_sweep / "sweep.json", empty / "sweep.json")
    with pytest.raises(NoisyLMError, match="no run .* has logged an evaluation"):
        report(empty)
    assert not (empty / "report").exists()
