"""benchmarks/validate_scan.py, the validation grid of `noisylm scan` on known truth: one small case."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "validate_scan.py"


@pytest.fixture(scope="module")
def validate_scan():
    spec = importlib.util.spec_from_file_location("validate_scan", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validate_small_case(validate_scan, shakespeare_gpt2, tmp_path):
    clean, kind, alpha = shakespeare_gpt2, "gaussian", 0.05
    rows = validate_scan.validate(
        clean, tmp_path / "work", kinds=(kind,), placements=("interleave",), alphas=(alpha,)
    )
    assert rows[0]["kind"] == "none (clean)" and rows[0]["alpha_hat"] < 0.005  # false positives
    row = rows[1]
    assert (row["kind"], row["placement"]) == (kind, "interleave")
    assert row["f1"] >= 0.95 and row["alpha_rel_error"] <= 0.10 and row["recall_long"] >= 0.95
    table = validate_scan.validation_markdown(rows)
    assert f"| {kind} | interleave |" in table and "yes" in table
    assert not any((tmp_path / "work").iterdir())  # corpora deleted after scanning
