"""k and ε measured on checkpoints (`noisylm.theory.measure`): paired windows against plain cross-entropy,
and Prop. 1's prediction row against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisylm.errors import NoisyLMError
from noisylm.model import GPT, preset
from noisylm.theory import formulas as T
from noisylm.theory import measure as M
from noisylm.theory.config import TheoryConfig
from noisylm.theory.runs import RunInfo

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


def test_window_starts_are_seeded_and_in_range():
    a = M.window_starts(1000, 64, 50, seed=1)
    assert np.array_equal(a, M.window_starts(1000, 64, 50, seed=1))
    assert a.min() >= 0 and a.max() <= 1000 - 65 and np.all(np.diff(a) >= 0)
    with pytest.raises(NoisyLMError, match="shorter than one window"):
        M.window_starts(10, 64, 5, seed=0)


def test_prediction_row_k_choice_and_undefined_k(tmp_path):
    run = RunInfo("uniform-a0.05", "uniform", 0.05, {}, tmp_path, tmp_path, {})
    better = M.EvalPoint(10, 3.0, 10.9, 2.99, 10.5)  # h better on clean text: epsilon < 0, k undefined
    early = M.EvalPoint(20, 3.0, 10.9, 3.05, 10.5)
    late = M.EvalPoint(30, 2.8, 10.9, 2.83, 10.2, clean_increase_se=0.01)
    row = M.prediction_row(run, [better, early, late], TheoryConfig())
    assert math.isnan(better.k) and row["k_iter"] == 20 and row["k"] == pytest.approx(267.4693, rel=1e-6)
    assert row["p_c"] == pytest.approx(math.exp(-2.8)) and row["measured_increase"] == pytest.approx(0.03)
    prop = T.proposition1(0.05, row["k"], math.exp(-2.8), math.exp(-10.9))
    assert row["statement"] == prop.statement == "1" and row["predicted_increase_bound"] == 0.0
    assert row["inside_bound"] is False and row["inside_within_2se"] is False
    row = M.prediction_row(run, [better, early, late], TheoryConfig(k_iter=30))
    assert row["k_iter"] == 30 and row["k"] == pytest.approx(late.k)
    row = M.prediction_row(run, [better], TheoryConfig())
    assert "k undefined" in row["note"] and "statement" not in row
    assert "no iteration" in M.prediction_row(run, [], TheoryConfig())["note"]


def _save_run(root, seed: int, iterations: list[int]) -> dict[int, object]:
    """Checkpoints of a randomly initialised tiny GPT (a different one per iteration) under ``root``."""
    from noisylm.training.checkpoint import save_checkpoint

    found = {}
    for it in iterations:
        torch.manual_seed(seed * 1000 + it)
        model = GPT(preset("tiny", vocab_size=257, block_size=16))
        optimizer = torch.optim.AdamW(model.parameters())
        state = {"model": model.config.to_dict()}
        found[it] = save_checkpoint(root / "checkpoints", it, model, optimizer, state, [], keep=10)
    return found


def _mean_ce(checkpoint, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-window mean cross-entropy of the full logits: the independent reference."""
    from noisylm.training.checkpoint import load_model

    model, _, _ = load_model(checkpoint)
    rows = torch.from_numpy(np.stack([np.asarray(tokens[s : s + 17], dtype=np.int64) for s in starts]))
    with torch.no_grad():
        logits = model.eval().logits(rows[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1), reduction="none")
    return ce.view(len(starts), -1).double().mean(dim=1).numpy()


def test_k_over_training_pairs_the_same_windows(noisy_bytes, tmp_path):
    from noisylm.data.shards import ShardSet

    clean = RunInfo(
        "clean", None, 0.0, {}, noisy_bytes, tmp_path / "c", _save_run(tmp_path / "c", 1, [10, 20])
    )
    noisy = RunInfo(
        "uniform-a0.2",
        "uniform",
        0.2,
        {},
        noisy_bytes,
        tmp_path / "n",
        _save_run(tmp_path / "n", 2, [10, 20, 30]),
    )
    config = TheoryConfig(eval_windows=6, batch_size=4, seed=5)
    points = M.k_over_training(clean, noisy, M.CheckpointEvaluator(config))
    assert [p.iter for p in points] == [10, 20]  # 30: only the noisy run kept it
    shards = ShardSet.open(noisy_bytes)
    for point in points:
        for split, ref_key, key in (
            ("val", "clean_loss_ref", "clean_loss"),
            ("noise", "noise_loss_ref", "noise_loss"),
        ):
            tokens = shards.tokens(split)
            starts = np.sort(np.random.default_rng(5).integers(0, len(tokens) - 17 + 1, size=6))
            ref = _mean_ce(clean.checkpoints[point.iter], tokens, starts)
            h = _mean_ce(noisy.checkpoints[point.iter], tokens, starts)
            assert getattr(point, ref_key) == pytest.approx(ref.mean(), rel=1e-5)
            assert getattr(point, key) == pytest.approx(h.mean(), rel=1e-5)
            if split == "val":  # the standard error of the paired differences
                assert point.clean_increase_se == pytest.approx(
                    (h - ref).std(ddof=1) / math.sqrt(6), rel=1e-3
                )
        assert point.epsilon == pytest.approx(math.exp(-point.clean_loss_ref) - math.exp(-point.clean_loss))
