"""`noisylm theory` against real (tiny) runs, and its building blocks against independent references."""

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
from noisylm.model import GPT, preset
from noisylm.theory import formulas as T
from noisylm.theory import measure as R

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory, shakespeare_bytes):
    from noisylm.data.injection import inject

    out = tmp_path_factory.mktemp("theory") / "interleaved"
    inject(
        shakespeare_bytes,
        out,
        alpha=0.2,
        kind="uniform",
        seed=0,
        placement="interleave",
        progress=False,
        doc_median=40.0,
    )
    return ShardSet.open(out)


def test_noise_labels_match_clean_mask(interleaved, noisy_bytes):
    for shards in (interleaved, ShardSet.open(noisy_bytes)):
        n = shards.splits["train"].tokens
        starts = R.window_starts(n, 64, 200, seed=3)
        labels = R.noise_labels(shards.noise_spans(), starts, 65)
        mask = ~shards.clean_mask()
        assert np.array_equal(labels, np.stack([mask[s : s + 65] for s in starts]))
        assert labels.any() and not labels.all()


def test_window_starts_are_seeded_and_in_range():
    a = R.window_starts(1000, 64, 50, seed=1)
    assert np.array_equal(a, R.window_starts(1000, 64, 50, seed=1))
    assert a.min() >= 0 and a.max() <= 1000 - 65 and np.all(np.diff(a) >= 0)
    with pytest.raises(NoisyLMError, match="shorter than one window"):
        R.window_starts(10, 64, 5, seed=0)


def test_token_losses_match_cross_entropy_of_logits():
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=16)).eval()
    tokens = np.random.default_rng(0).integers(0, 257, size=400).astype(np.uint16)
    starts = np.array([0, 5, 100, 383])
    got = R.token_losses(model, tokens, starts, batch_size=3, device="cpu")
    rows = torch.from_numpy(np.stack([tokens[s : s + 17].astype(np.int64) for s in starts]))
    with torch.no_grad():
        logits = model.logits(rows[:, :-1])
    ref = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).double(), rows[:, 1:].reshape(-1), reduction="none"
    )
    assert got.shape == (4, 16)
    np.testing.assert_allclose(got.ravel(), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_pure_coordinates_brute_force(interleaved, shakespeare_bytes):
    train, spans = interleaved.tokens("train"), interleaved.noise_spans()
    clean_mask = interleaved.clean_mask()
    clean_text, noise = ShardSet.open(shakespeare_bytes).tokens("train"), interleaved.tokens("noise")
    positions = np.random.default_rng(0).integers(0, len(train), size=2000)
    positions = np.concatenate([positions, spans[:, 0], spans[:, 0] + spans[:, 1] - 1, [0, len(train) - 1]])
    q = R.pure_coordinates(spans, positions)
    brute_clean = np.cumsum(clean_mask) - 1
    brute_noise = np.cumsum(~clean_mask) - 1
    for p, qq in zip(positions, q, strict=True):
        if clean_mask[p]:
            assert qq == brute_clean[p] and clean_text[qq] == train[p]
        else:
            assert qq == brute_noise[p] and noise[qq] == train[p]


def test_counterpart_losses_brute_force(interleaved, shakespeare_bytes):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=24)).eval()
    train, spans = interleaved.tokens("train"), interleaved.noise_spans()
    streams = (ShardSet.open(shakespeare_bytes).tokens("train"), interleaved.tokens("noise"))
    edges = np.concatenate([spans[:, 0], spans[:, 0] + spans[:, 1]])
    edges = edges[edges < len(train) - 30]
    starts = np.sort(
        np.concatenate([edges[edges > 30] - 5, edges[edges > 30] - 20, [int(spans[0, 1]) + 100]])
    )
    labels = R.noise_labels(spans, starts, 25)
    losses = R.token_losses(model, train, starts, 16, "cpu")
    paired = R.counterpart_losses(model, losses, starts, labels, spans, streams, R.TheoryConfig())
    crossing = R.crossing_targets(labels)
    assert crossing.any() and np.isfinite(paired).all()
    np.testing.assert_array_equal(paired[~crossing], losses[~crossing])
    picked = np.random.default_rng(0).permutation(np.count_nonzero(crossing))[:25]  # single passes are slow
    for w, j in np.transpose(np.nonzero(crossing))[picked]:
        p = starts[w] + j + 1  # the target token in train.bin
        kind = int(labels[w, j + 1])
        q = int(R.pure_coordinates(spans, np.array([p]))[0])
        stream = streams[kind]
        # the same context length, pure: the tokens before q in its own stream (cyclically at its start)
        window = np.asarray(stream[(q - j - 1 + np.arange(j + 2)) % len(stream)], dtype=np.int64)
        x = torch.from_numpy(window[None, :-1])
        y = torch.from_numpy(window[None, 1:])
        expected = model.token_losses(x, y)[0, -1].item()
        assert paired[w, j] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_expected_crossing_fraction_brute_force():
    spans = np.array([[0, 7], [40, 3], [60, 30], [150, 5]], dtype=np.int64)
    n, block = 200, 16
    starts = np.arange(n - block)
    crossing = R.crossing_targets(R.noise_labels(spans, starts, block + 1))
    assert R.expected_crossing_fraction(spans, n, block) == pytest.approx(crossing.mean(), rel=1e-12)
    assert R.expected_crossing_fraction(np.zeros((0, 2), np.int64), n, block) == 0.0


def test_lemma1_measure(noisy_bytes, shakespeare_bytes, interleaved):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=32)).eval()
    clean = ShardSet.open(shakespeare_bytes).tokens("train")
    config = R.TheoryConfig(lemma1_windows=24, batch_size=16)
    for shards in (ShardSet.open(noisy_bytes), interleaved):
        r = R.lemma1_measure(model, shards, clean, config)
        assert r["lemma1_prediction"] == pytest.approx(
            T.lemma1_mixed_loss(r["alpha_windows"], r["noise_loss_paired"], r["clean_loss_paired"]), rel=1e-9
        )
        if r["crossing_fraction_sampled"] == 0:  # no crossing context drawn: Lemma 1 holds exactly
            assert r["gap"] == pytest.approx(0.0, abs=1e-12)
        assert r["crossing_excess_loss"] is not None  # boundary windows always cross
        assert 0 < r["crossing_fraction_expected"] < 0.01
        assert r["expected_gap"] == pytest.approx(r["crossing_fraction_expected"] * r["crossing_excess_loss"])


def test_crossing_targets_brute_force(interleaved):
    spans = interleaved.noise_spans()
    # windows that straddle each span's start and end, plus pure ones
    starts = np.array(
        [max(0, int(o) - 10) for o, _ in spans] + [int(o + n) - 20 for o, n in spans] + [int(spans[0, 0]) + 1]
    )
    labels = R.noise_labels(spans, starts, 33)
    got = R.crossing_targets(labels)
    for w in range(len(starts)):
        for j in range(32):
            kinds = set(labels[w, : j + 2].tolist())
            assert got[w, j] == (len(kinds) == 2)
    assert got.any() and not got.all()


def test_config_and_sweep_dir_errors(tmp_path):
    with pytest.raises(UsageError, match="--k"):
        R.TheoryConfig(k=0.0)
    with pytest.raises(UsageError, match="eval-windows"):
        R.TheoryConfig(eval_windows=0)
    with pytest.raises(NoisyLMError, match="not a sweep directory"):
        R.theory(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [], "clean_run": None}))
    with pytest.raises(NoisyLMError, match="no clean run"):
        R.theory(tmp_path)


def test_fig9_caption_numbers(tmp_path):
    name, caption = R.fig9(tmp_path)
    assert (tmp_path / name).stat().st_size > 1000
    assert "(3b)" in caption and "0.1113" in caption and "0.0541" in caption
    assert math.isclose(float(caption.split("2η = ")[1].split(",")[0]), 0.0058, abs_tol=5e-5)


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
    from noisylm.experiments import SweepConfig, report, sweep

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
    return R.theory(tiny_sweep, eval_windows=16, lemma1_windows=16, batch_size=16, threads=1)


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
        starts = R.window_starts(len(tokens), 32, 16, seed=0)
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
        R.theory(copy, k_iter=7, eval_windows=8, lemma1_windows=8, lemma1_max_tokens=0, threads=1)
    assert main([*args, "--k", "-1"]) == 2
    assert "--k -1.0 must be a positive number" in capsys.readouterr().err
    assert main(["theory", str(tmp_path / "missing")]) == 1
    assert "not a sweep directory" in capsys.readouterr().err


def test_multilingual_text_uses_prop1_with_k_1(tmp_path):
    run = R.RunInfo("corpus-a0.55", "corpus", 0.55, {"source": "docs"}, tmp_path, tmp_path, {})
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
    (text,) = R._multilingual_texts([run], [row])
    assert "statement (3b)" in text and "0.0541 nats at the optimum" in text and "at most 0.1109" in text
    assert R._multilingual_texts([dataclasses.replace(run, kind="uniform")], [row]) == []


def test_prediction_row_k_choice_and_undefined_k(tmp_path):
    run = R.RunInfo("uniform-a0.05", "uniform", 0.05, {}, tmp_path, tmp_path, {})
    better = R.EvalPoint(10, 3.0, 10.9, 2.99, 10.5)  # h better on clean text: epsilon < 0, k undefined
    early = R.EvalPoint(20, 3.0, 10.9, 3.05, 10.5)
    late = R.EvalPoint(30, 2.8, 10.9, 2.83, 10.2, clean_increase_se=0.01)
    row = R.prediction_row(run, [better, early, late], R.TheoryConfig())
    assert math.isnan(better.k) and row["k_iter"] == 20 and row["k"] == pytest.approx(267.4693, rel=1e-6)
    assert row["p_c"] == pytest.approx(math.exp(-2.8)) and row["measured_increase"] == pytest.approx(0.03)
    prop = T.proposition1(0.05, row["k"], math.exp(-2.8), math.exp(-10.9))
    assert row["statement"] == prop.statement == "1" and row["predicted_increase_bound"] == 0.0
    assert row["inside_bound"] is False and row["inside_within_2se"] is False
    row = R.prediction_row(run, [better, early, late], R.TheoryConfig(k_iter=30))
    assert row["k_iter"] == 30 and row["k"] == pytest.approx(late.k)
    row = R.prediction_row(run, [better], R.TheoryConfig())
    assert "k undefined" in row["note"] and "statement" not in row
    assert "no iteration" in R.prediction_row(run, [], R.TheoryConfig())["note"]
