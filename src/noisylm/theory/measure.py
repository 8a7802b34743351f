"""k and ε measured on a sweep's checkpoints (Fig. 7a), and Prop. 1's prediction beside the measurement.

At every iteration where the clean run (h*) and a noisy run (h) both kept a checkpoint, both models are
evaluated on the *same* windows of clean validation text and of that run's noise (``noise.bin``): p_c,
p_n from h*, ε and ε/k from h (Eqs. 11–12), k = ε/(ε/k), and the lower bound of Eq. 13. Paired windows
matter: for uniform noise ε/k is ~10⁻⁶. For every noisy run, `prediction_row` puts the clean-loss
increase Prop. 1 allows (k from an early checkpoint, or supplied) beside the increase measured at the
last common checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.errors import NoisyLMError, UsageError
from noisylm.theory import formulas as T
from noisylm.theory.config import TheoryConfig
from noisylm.theory.runs import RunInfo


def window_starts(n_tokens: int, block_size: int, n_windows: int, seed: int) -> np.ndarray:
    """Sorted start offsets of ``n_windows`` windows of ``block_size + 1`` tokens (inputs + targets)."""
    span = n_tokens - block_size - 1
    if span < 0:
        raise NoisyLMError(
            f"a split of {n_tokens} tokens is shorter than one window of {block_size + 1}; "
            "use more data or a smaller block_size"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(0, span + 1, size=n_windows))


@dataclass
class EvalPoint:
    """Losses of h* (ref) and h on the same windows at one iteration, and what Prop. 1 makes of them."""

    iter: int
    clean_loss_ref: float  # L(P^c, h*)
    noise_loss_ref: float  # L(P^n, h*)
    clean_loss: float  # L(P^c, h)
    noise_loss: float  # L(P^n, h)
    clean_increase_se: float = math.nan  # standard error of L(P^c,h) − L(P^c,h*) over the paired windows

    @property
    def epsilon(self) -> float:
        return T.epsilon_from_losses(self.clean_loss_ref, self.clean_loss)

    @property
    def epsilon_over_k(self) -> float:
        return T.epsilon_over_k_from_losses(self.noise_loss_ref, self.noise_loss)

    @property
    def k(self) -> float:
        """k (Eq. 13), NaN where Prop. 1's premise (ε > 0, ε/k > 0) does not hold at this iteration."""
        if self.epsilon <= 0 or self.epsilon_over_k <= 0:
            return math.nan
        return T.k_from_losses(self.clean_loss_ref, self.noise_loss_ref, self.clean_loss, self.noise_loss)

    @property
    def k_lower_bound(self) -> float:
        if self.epsilon <= 0 or self.epsilon_over_k <= 0:
            return math.nan
        return T.k_lower_bound(self.clean_loss_ref, self.clean_loss, self.noise_loss)

    def row(self) -> dict[str, Any]:
        return {
            "iter": self.iter,
            "clean_loss_ref": self.clean_loss_ref,
            "noise_loss_ref": self.noise_loss_ref,
            "clean_loss": self.clean_loss,
            "noise_loss": self.noise_loss,
            "clean_increase_se": self.clean_increase_se,
            "epsilon": self.epsilon,
            "epsilon_over_k": self.epsilon_over_k,
            "k": self.k,
            "k_lower_bound_eq13": self.k_lower_bound,
        }


class CheckpointEvaluator:
    """Evaluates checkpoints on fixed windows; caches each (checkpoint, token set)'s per-window losses."""

    def __init__(self, config: TheoryConfig):
        self.config = config
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._model: tuple[str, Any] | None = None  # the last model loaded

    def window_losses(self, checkpoint: Path, name: str, tokens: np.ndarray) -> np.ndarray:
        """Mean loss of each window (the same windows for every checkpoint of a token set)."""
        from noisylm.training.evaluate import load_eval_model, token_losses  # torch: only here

        key = (str(checkpoint), name)
        if key not in self._cache:
            if self._model is None or self._model[0] != str(checkpoint):
                self._model = (str(checkpoint), load_eval_model(checkpoint, self.config.device).model)
            model = self._model[1]
            starts = window_starts(
                len(tokens), model.config.block_size, self.config.eval_windows, self.config.seed
            )
            losses = token_losses(model, tokens, starts, batch_size=self.config.batch_size)
            self._cache[key] = losses.mean(axis=1)
        return self._cache[key]


def _eval_sets(run: RunInfo) -> dict[str, np.ndarray]:
    from noisylm.data.shards import ShardSet

    shards = ShardSet.open(run.data)
    if not shards.has("noise") or shards.splits["noise"].tokens == 0:
        raise NoisyLMError(f"noisy shard set {run.data} has no noise split; re-run `noisylm inject`")
    return {"val": shards.tokens("val"), f"noise:{run.name}": shards.tokens("noise")}


def k_over_training(clean: RunInfo, run: RunInfo, evaluator: CheckpointEvaluator) -> list[EvalPoint]:
    """One `EvalPoint` per iteration at which both runs kept a checkpoint (Fig. 7a)."""
    sets = _eval_sets(run)
    noise_name = f"noise:{run.name}"
    points = []
    for it in sorted(set(clean.checkpoints) & set(run.checkpoints)):
        ref, ckpt = clean.checkpoints[it], run.checkpoints[it]
        clean_ref = evaluator.window_losses(ref, "val", sets["val"])
        clean_h = evaluator.window_losses(ckpt, "val", sets["val"])
        diff = clean_h - clean_ref  # paired: the same windows
        points.append(
            EvalPoint(
                iter=it,
                clean_loss_ref=float(clean_ref.mean()),
                noise_loss_ref=float(evaluator.window_losses(ref, noise_name, sets[noise_name]).mean()),
                clean_loss=float(clean_h.mean()),
                noise_loss=float(evaluator.window_losses(ckpt, noise_name, sets[noise_name]).mean()),
                clean_increase_se=float(diff.std(ddof=1) / math.sqrt(len(diff)))
                if len(diff) > 1
                else math.nan,
            )
        )
    return points


# --------------------------------------------------------------------------------------------------
# Predicted vs measured


def prediction_row(run: RunInfo, points: list[EvalPoint], config: TheoryConfig) -> dict[str, Any]:
    """Prop. 1's bound for one run (k early or supplied; p_c, p_n at the last common checkpoint of h*)
    beside the clean-loss increase measured at that checkpoint."""
    row: dict[str, Any] = {"run": run.name, "kind": run.kind, "alpha": run.alpha}
    if not points:
        return {**row, "note": "no iteration at which both the clean and this run kept a checkpoint"}
    final = points[-1]
    if config.k is not None:
        k, k_iter, k_source = config.k, None, "supplied"
    else:
        candidates = [p for p in points if math.isfinite(p.k)]
        if config.k_iter is not None:
            candidates = [p for p in points if p.iter == config.k_iter]
            if not candidates:
                raise UsageError(
                    f"--k-iter {config.k_iter}: runs clean and {run.name} share no checkpoint there; "
                    f"common checkpoints: {[p.iter for p in points]}"
                )
        k = candidates[0].k if candidates else math.nan
        k_iter, k_source = (candidates[0].iter if candidates else None), "estimated"
    p_c, p_n = T.prob_from_loss(final.clean_loss_ref), T.prob_from_loss(final.noise_loss_ref)
    measured = final.clean_loss - final.clean_loss_ref
    row.update(
        {
            "k": k,
            "k_source": k_source,
            "k_iter": k_iter,
            "iter": final.iter,
            "p_c": p_c,
            "p_n": p_n,
            "measured_epsilon": final.epsilon,
            "measured_increase": measured,
            "measured_increase_se": final.clean_increase_se,
        }
    )
    if not math.isfinite(k):
        return {
            **row,
            "note": "k undefined at the checkpoint(s) considered (the noisy model was not worse on clean "
            "text or not better on the noise there); pass --k or another --k-iter",
        }
    prop = T.proposition1(run.alpha, k, p_c, p_n)
    bound = T.predicted_clean_loss_increase(run.alpha, k, p_c, p_n, "bound")
    row.update(
        {
            "statement": prop.statement,
            "alpha_star": prop.alpha_star,
            "eta": prop.eta,
            "epsilon_bound": prop.epsilon_upper
            if prop.epsilon_upper is not None
            else prop.epsilon_upper_exact,
            "predicted_increase_optimum": prop.clean_loss_increase_optimum,
            "predicted_increase_bound": bound,
            "inside_bound": bool(measured <= bound),
            # within the evaluation's noise: measured − 2 SE (paired windows) is inside the bound
            "inside_within_2se": bool(measured - 2 * final.clean_increase_se <= bound),
            "note": prop.describe(),
        }
    )
    return row
