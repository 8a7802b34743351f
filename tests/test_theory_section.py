"""`noisylm theory` end to end on a real (tiny) sweep: the section, theory.json against independent
recomputation, the CLI; and the section's texts."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.theory import formulas as T
from noisylm.theory import section as S
from noisylm.theory.measure import window_starts
from noisylm.theory.runs import RunInfo

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


def test_not_a_sweep_is_one_clear_error(tmp_path):
    with pytest.raises(NoisyLMError, match="not a sweep directory"):
        S.theory(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [], "clean_run": None}))
    with pytest.raises(NoisyLMError, match="regenerate it with `noisylm sweep`"):
        S.theory(tmp_path)  # read by the one sweep-directory reader, which checks the format
    meta = {"format": "noisylm-sweep/1", "name": "x", "config": {}, "runs": [], "clean_run": None}
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    with pytest.raises(NoisyLMError, match="no clean run"):
        S.theory(tmp_path)


# ------------------------------------------------------------------------ end to end on a real sweep
TINY_TRAIN = {
    "model": "tiny",
    "block_size": 32,
    "batch_size": 8,
    "max_iters": 30,
    "warmup_iters": 5,
    "learning_rate": 3e-3,
    "min_lr": 3e-4,
    "eval_interval": 10,
    "eval_iters": 2,
    "checkpoint_interval": 10,
    "keep_checkpoints": 10,
    "tensorboard": False,
    "progress": False,
    "device": "cpu",
    "threads": 1,
}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, shakespeare_bytes):
    """A real sweep: the clean run and uniform noise at α = 0.2, 30 iterations of the tiny GPT."""
    from noisylm.experiments import SweepConfig, sweep
    from noisylm.experiments.reporting import report

    out = tmp_path_factory.mktemp("theory") / "sweep"
    config = SweepConfig(
        name="tiny",
        data=str(shakespeare_bytes),
        noise=[{"kind": "uniform", "alphas": [0.2]}],
        train=dict(TINY_TRAIN),
    )
    summary = sweep(config, out)
    assert summary["counts"]["finished"] == 2
    report(out)
    return out


@pytest.fixture(scope="module")
def theory_out(tiny_sweep):
    return S.theory(tiny_sweep, eval_windows=16, lemma1_windows=16, batch_size=16, threads=1)


def test_theory_writes_section_and_index(tiny_sweep, theory_out):
    assert theory_out == tiny_sweep / "report" / "theory"
    section = json.loads((theory_out / "section.json").read_text())
    assert section["order"] >= 60
    paths = {item["path"] for item in section["items"] if "path" in item}
    assert {"fig7a.png", "fig7b.png", "fig9.png", "predicted_vs_measured.md", "lemma1.md"} <= paths
    for path in paths:
        assert (theory_out / path).stat().st_size > 0
    index = (tiny_sweep / "report" / "index.html").read_text()
    assert "Proposition 1" in index and 'id="theory"' in index and 'id="fig2"' in index
    result = json.loads((theory_out / "theory.json").read_text())
    assert result["provenance"]["config"]["eval_windows"] == 16


def test_k_over_training_matches_paired_losses(tiny_sweep, theory_out):
    result = json.loads((theory_out / "theory.json").read_text())
    points = result["k_over_training"]["uniform-a0.2"]
    assert [p["iter"] for p in points] == [10, 20, 30]  # every checkpoint both runs kept
    # recompute one point independently: load both checkpoints, same windows, plain cross-entropy
    from noisylm.training.checkpoint import load_model

    last = points[-1]
    ref, _, _ = load_model(tiny_sweep / "runs" / "clean" / "checkpoints" / "ckpt-0000030")
    noisy, _, _ = load_model(tiny_sweep / "runs" / "uniform-a0.2" / "checkpoints" / "ckpt-0000030")
    data = ShardSet.open(tiny_sweep / "data" / "uniform-a0.2")
    for model, key in (
        (ref, "clean_loss_ref"),
        (noisy, "clean_loss"),
        (ref, "noise_loss_ref"),
        (noisy, "noise_loss"),
    ):
        tokens = data.tokens("val" if key.startswith("clean") else "noise")
        starts = window_starts(len(tokens), 32, 16, seed=0)
        rows = torch.from_numpy(np.stack([tokens[s : s + 33].astype(np.int64) for s in starts]))
        with torch.no_grad():
            logits = model.eval().logits(rows[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1)).item()
        assert last[key] == pytest.approx(ce, rel=1e-4)
    for p in points:
        eps = T.epsilon_from_losses(p["clean_loss_ref"], p["clean_loss"])
        assert p["epsilon"] == pytest.approx(eps)
        if eps > 0 and p["epsilon_over_k"] > 0:
            k = T.k_from_losses(p["clean_loss_ref"], p["noise_loss_ref"], p["clean_loss"], p["noise_loss"])
            assert p["k"] == pytest.approx(k)
            assert p["k_lower_bound_eq13"] < p["k"]
        else:
            assert p["k"] is None or math.isnan(p["k"])


def test_predicted_vs_measured_row(tiny_sweep, theory_out):
    result = json.loads((theory_out / "theory.json").read_text())
    (row,) = result["predicted_vs_measured"]
    points = result["k_over_training"]["uniform-a0.2"]
    final = points[-1]
    assert row["iter"] == 30
    assert row["measured_increase"] == pytest.approx(final["clean_loss"] - final["clean_loss_ref"])
    manifest = json.loads((tiny_sweep / "data" / "uniform-a0.2" / "manifest.json").read_text())
    assert row["alpha"] == pytest.approx(manifest["noise"]["alpha_achieved"])
    if "statement" in row:
        defined = [p for p in points if p["k"] is not None and math.isfinite(p["k"])]
        assert row["k_iter"] == defined[0]["iter"] and row["k"] == pytest.approx(defined[0]["k"])
        bound = T.predicted_clean_loss_increase(row["alpha"], row["k"], row["p_c"], row["p_n"])
        assert row["predicted_increase_bound"] == pytest.approx(bound)
        assert row["inside_bound"] == (row["measured_increase"] <= bound)
        assert row["statement"] == T.proposition1(row["alpha"], row["k"], row["p_c"], row["p_n"]).statement


def test_lemma1_rows_for_both_placements(theory_out):
    rows = json.loads((theory_out / "theory.json").read_text())["lemma1"]
    assert {r["placement"] for r in rows} == {"append", "interleave"}
    for r in rows:
        assert r["lemma1_prediction"] == pytest.approx(
            r["alpha_windows"] * r["noise_loss_paired"] + (1 - r["alpha_windows"]) * r["clean_loss_paired"]
        )
        assert r["gap"] == pytest.approx(r["measured_mixed_loss"] - r["lemma1_prediction"])


def test_cli_supplied_k_and_bad_inputs(tiny_sweep, tmp_path, capsys):
    import shutil

    from noisylm.cli import main

    copy = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, copy)
    args = ["theory", str(copy), "--eval-windows", "8", "--lemma1-windows", "8", "--lemma1-max-tokens", "0"]
    assert main([*args, "--threads", "1", "--k", "1000"]) == 0
    out = capsys.readouterr().out
    assert "uniform-a0.2: k=1e+03" in out and "Lemma 1" in out and "index.html" in out
    (row,) = json.loads((copy / "report" / "theory" / "theory.json").read_text())["predicted_vs_measured"]
    assert row["k"] == 1000.0 and row["k_source"] == "supplied"
    with pytest.raises(UsageError, match="share no checkpoint"):
        S.theory(copy, k_iter=7, eval_windows=8, lemma1_windows=8, lemma1_max_tokens=0, threads=1)
    assert main([*args, "--k", "-1"]) == 2
    assert "--k -1.0 must be a positive number" in capsys.readouterr().err
    assert main(["theory", str(tmp_path / "missing")]) == 1
    assert "not a sweep directory" in capsys.readouterr().err


def test_multilingual_text_uses_prop1_with_k_1(tmp_path):
    run = RunInfo("corpus-a0.55", "corpus", 0.55, {"source": "docs"}, tmp_path, tmp_path, {})
    p_c, p_n = math.exp(-2.9), math.exp(-2.8)  # Fig. 9's numbers
    row = {
        "statement": "3b",
        "alpha": 0.55,
        "p_c": p_c,
        "p_n": p_n,
        "k": 1.0,
        "measured_epsilon": 0.001,
        "predicted_increase_optimum": 0.05411,
        "predicted_increase_bound": 0.1113,
        "measured_increase": 0.02,
        "measured_increase_se": 0.001,
    }
    (text,) = S._multilingual_texts([run], [row])
    assert "statement (3b)" in text and "0.0541 nats at the optimum" in text and "at most 0.1109" in text
    assert S._multilingual_texts([dataclasses.replace(run, kind="uniform")], [row]) == []
