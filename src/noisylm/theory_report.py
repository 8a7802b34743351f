"""Proposition 1 and Lemma 1 against a sweep's real runs (`noisylm theory SWEEP_DIR`).

Writes ``sweep_dir/report/theory/`` (figures, Markdown/CSV tables, ``theory.json`` with every number,
``section.json``) and rebuilds the report's ``index.html``:

* **k over training (Fig. 7a).** At every iteration where the clean run (h*) and a noisy run (h) both
  kept a checkpoint, both models are evaluated on the *same* windows of clean validation text and of
  that run's noise (``noise.bin``): p_c, p_n from h*, ε and ε/k from h (Eqs. 11–12), k = ε/(ε/k), and the
  lower bound of Eq. 13. Paired windows matter: for uniform noise ε/k is ~10⁻⁶.
* **L(P^m, h) against ε (Fig. 7b)** at each run's α, p_c, p_n (final checkpoint of h*) and k (estimated
  early), with η, the bound of the applying statement and the measured ε marked.
* **Fig. 9**, the multilingual reading of Appendix D.3 (α = 0.55, k = 1, L(P^c,h*) = 2.9, L(P^n,h*) = 2.8).
* **Predicted vs measured.** For every noisy run: the clean-loss increase Prop. 1 allows with k from an
  early checkpoint (or supplied), beside the increase measured at the last common checkpoint, and
  whether the measurement falls inside the bound.
* **Lemma 1 on real data.** The final noisy model's loss on windows of the actual mixed training shards
  against α·L(P^n,h) + (1−α)·L(P^c,h) from pure windows, for the sweep's placement and the other one
  (append / interleave, re-injected with the same noise and seed into a temporary folder). The gap is
  decomposed by target token: contexts that cross a clean/noise boundary belong to neither P^c nor P^n,
  so Eq. 1 — and with it Lemma 1 — does not hold for (context, next-token) pairs of a concatenated stream.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisylm import theory as T
from noisylm.artifacts import atomic_dir, atomic_write_json, atomic_write_text, provenance, read_json
from noisylm.errors import NoisyLMError, UsageError

SECTION = "theory"
SECTION_ORDER = 60
FIG9 = {"alpha": 0.55, "k": 1.0, "clean_loss_ref": 2.9, "noise_loss_ref": 2.8}  # Appendix D.3
DPI = 110


@dataclass
class TheoryConfig:
    """Options of `theory`.

    k: use this k for every run instead of estimating it (Prop. 1's k; must be > 0).
    k_iter: estimate k at this iteration (a checkpoint both runs kept); default: the earliest common
        checkpoint at which k is defined (ε > 0 and ε/k > 0).
    eval_windows: windows per eval set (clean val, noise) and checkpoint; the same windows for every model.
    lemma1_windows: windows drawn from each mixed training shard set for Lemma 1.
    lemma1_max_tokens: build the other placement (a temporary re-injection) only for clean corpora up to
        this many training tokens; bigger corpora get Lemma 1 for the sweep's own placement only.
    batch_size: windows per forward pass.
    device: torch device for the evaluations ("cpu", "cuda", "mps").
    threads: torch intra-op threads on CPU during `theory` (None: PyTorch's default).
    seed: seeds the choice of windows.
    """

    k: float | None = None
    k_iter: int | None = None
    eval_windows: int = 64
    lemma1_windows: int = 64
    lemma1_max_tokens: int = 50_000_000
    batch_size: int = 16
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k is not None and not (self.k > 0 and math.isfinite(self.k)):
            raise UsageError(f"--k {self.k} must be a positive number (Prop. 1's k); omit it to estimate k")
        for name in ("eval_windows", "lemma1_windows", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.lemma1_max_tokens < 0:
            raise UsageError("--lemma1-max-tokens must be >= 0")


# --------------------------------------------------------------------------------------------------
# Reading the sweep


@dataclass
class RunInfo:
    name: str
    kind: str | None
    alpha: float  # achieved α of the shard set (requested α when unknown)
    params: dict[str, Any]  # the noise parameters as the sweep passed them to `inject`
    data: Path
    run_dir: Path
    checkpoints: dict[int, Path]  # iteration -> checkpoint directory


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    folder = run_dir / "checkpoints"
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and path.name.startswith("ckpt-") and path.name[5:].isdigit():
                found[int(path.name[5:])] = path
    return dict(sorted(found.items()))


def load_sweep(sweep_dir: Path) -> tuple[dict[str, Any], RunInfo, list[RunInfo]]:
    """``sweep.json``, the clean run and the noisy runs that have at least one checkpoint."""
    if not (sweep_dir / "sweep.json").is_file():
        raise NoisyLMError(f"{sweep_dir} is not a sweep directory (no sweep.json); run `noisylm sweep` first")
    meta = read_json(sweep_dir / "sweep.json", "sweep config")
    runs = []
    for entry in meta["runs"]:
        data = sweep_dir / entry["data"]
        alpha = float(entry["alpha"])
        manifest = data / "manifest.json"
        if entry["kind"] is not None and manifest.is_file():
            record = read_json(manifest, "shard manifest").get("noise") or {}
            alpha = float(record.get("alpha_achieved", alpha))
        run_dir = sweep_dir / entry["run_dir"]
        params = dict(entry.get("params") or {})
        runs.append(
            RunInfo(entry["name"], entry["kind"], alpha, params, data, run_dir, _checkpoints(run_dir))
        )
    clean = next((r for r in runs if r.name == meta.get("clean_run")), None)
    if clean is None:
        raise NoisyLMError(
            f"sweep {sweep_dir} has no clean run; Prop. 1 compares against h* trained on clean data, "
            "so run a sweep with clean = true"
        )
    if not clean.checkpoints:
        raise NoisyLMError(f"the clean run {clean.run_dir} has no checkpoint yet; run or resume the sweep")
    noisy = [r for r in runs if r.kind is not None and r.checkpoints]
    if not noisy:
        raise NoisyLMError(f"no noisy run of {sweep_dir} has a checkpoint yet; run or resume the sweep")
    return meta, clean, noisy


# --------------------------------------------------------------------------------------------------
# Evaluation: per-token losses of a checkpoint on fixed windows


def load_model(checkpoint: Path, device: str = "cpu") -> Any:
    """The GPT of a checkpoint directory, in eval mode on ``device``."""
    from noisylm.training.checkpoint import load_model as load_checkpoint

    model, _, _ = load_checkpoint(checkpoint, device=device)
    model.eval()
    return model


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


def token_losses(
    model: Any, tokens: np.ndarray, starts: np.ndarray, batch_size: int, device: str
) -> np.ndarray:
    """Per-target next-token losses (float64, shape (windows, block_size)) on ``tokens[s : s + T + 1]``."""
    import torch

    block = model.config.block_size
    out = np.empty((len(starts), block), dtype=np.float64)
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            rows = np.stack(
                [np.asarray(tokens[s : s + block + 1], dtype=np.int64) for s in starts[i : i + batch_size]]
            )
            batch = torch.from_numpy(rows).to(device)
            losses = model.token_losses(batch[:, :-1], batch[:, 1:])
            out[i : i + len(rows)] = losses.double().cpu().numpy()
    return out


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


class _Evaluator:
    """Evaluates checkpoints on fixed windows; caches each (checkpoint, token set)'s per-window losses."""

    def __init__(self, config: TheoryConfig):
        self.config = config
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._model: tuple[str, Any] | None = None  # the last model loaded

    def window_losses(self, checkpoint: Path, name: str, tokens: np.ndarray) -> np.ndarray:
        """Mean loss of each window (the same windows for every checkpoint of a token set)."""
        key = (str(checkpoint), name)
        if key not in self._cache:
            if self._model is None or self._model[0] != str(checkpoint):
                self._model = (str(checkpoint), load_model(checkpoint, self.config.device))
            model = self._model[1]
            starts = window_starts(
                len(tokens), model.config.block_size, self.config.eval_windows, self.config.seed
            )
            losses = token_losses(model, tokens, starts, self.config.batch_size, self.config.device)
            self._cache[key] = losses.mean(axis=1)
        return self._cache[key]


def _eval_sets(run: RunInfo) -> dict[str, np.ndarray]:
    from noisylm.shards import ShardSet

    shards = ShardSet.open(run.data)
    if not shards.has("noise") or shards.splits["noise"].tokens == 0:
        raise NoisyLMError(f"noisy shard set {run.data} has no noise split; re-run `noisylm inject`")
    return {"val": shards.tokens("val"), f"noise:{run.name}": shards.tokens("noise")}


def k_over_training(clean: RunInfo, run: RunInfo, evaluator: _Evaluator) -> list[EvalPoint]:
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
            "note": "k undefined at every common checkpoint (the noisy model was not worse on clean text "
            "or not better on the noise); pass --k",
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


# --------------------------------------------------------------------------------------------------
# Lemma 1 on real data


def noise_labels(spans: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Boolean (windows, width): True where ``train.bin[start + j]`` lies in a noise span.

    Works from the sorted, disjoint spans (no mask over the whole corpus, which may hold billions of tokens).
    """
    labels = np.zeros((len(starts), width), dtype=bool)
    if len(spans) == 0:
        return labels
    offsets, ends = spans[:, 0], spans[:, 0] + spans[:, 1]
    for i, start in enumerate(starts):
        j = int(np.searchsorted(ends, start, side="right"))  # the first span that ends after `start`
        while j < len(spans) and offsets[j] < start + width:
            lo, hi = max(offsets[j], start), min(ends[j], start + width)
            labels[i, lo - start : hi - start] = True
            j += 1
    return labels


def crossing_targets(labels: np.ndarray) -> np.ndarray:
    """(windows, T) mask of the targets whose context + target mixes clean and noise tokens.

    ``labels`` is (windows, T + 1), True for noise. Target j of a window is token j + 1 with context
    tokens 0..j; such a pair is in neither supp(P^c) nor supp(P^n) when the tokens 0..j+1 are of both kinds.
    """
    seen_noise = np.logical_or.accumulate(labels, axis=1)[:, 1:]
    seen_clean = np.logical_or.accumulate(~labels, axis=1)[:, 1:]
    return seen_noise & seen_clean


def lemma1_measure(model: Any, mixed: Any, clean_tokens: np.ndarray, config: TheoryConfig) -> dict[str, Any]:
    """Lemma 1 for one model and one mixed shard set (``mixed``: a `ShardSet` with noise spans).

    Measured: the mean loss on windows of the mixed ``train.bin`` (every target counts) and the fraction
    α_w of noise targets among them. Predicted: α_w·L(P^n,h) + (1−α_w)·L(P^c,h) with L(P^n,h) on windows
    of ``noise.bin`` and L(P^c,h) on windows of the clean training text. The mixed targets are split by
    whether their context (the window up to the target) mixes clean and noise tokens.
    """
    block, bs, dev = model.config.block_size, config.batch_size, config.device
    train = mixed.tokens("train")
    starts = window_starts(len(train), block, config.lemma1_windows, config.seed + 1)
    labels = noise_labels(mixed.noise_spans(), starts, block + 1)
    losses = token_losses(model, train, starts, bs, dev)
    target_noise = labels[:, 1:]
    crossing = crossing_targets(labels)
    noise_tokens = mixed.tokens("noise")
    n_pure = token_losses(
        model,
        noise_tokens,
        window_starts(len(noise_tokens), block, config.lemma1_windows, config.seed + 2),
        bs,
        dev,
    )
    c_pure = token_losses(
        model,
        clean_tokens,
        window_starts(len(clean_tokens), block, config.lemma1_windows, config.seed + 3),
        bs,
        dev,
    )
    alpha_w = float(target_noise.mean())
    measured = float(losses.mean())
    loss_n, loss_c = float(n_pure.mean()), float(c_pure.mean())
    predicted = alpha_w * loss_n + (1 - alpha_w) * loss_c

    def part(mask: np.ndarray) -> tuple[float, float | None]:
        return float(mask.mean()), (float(losses[mask].mean()) if mask.any() else None)

    frac_cross_c, loss_cross_c = part(crossing & ~target_noise)
    frac_cross_n, loss_cross_n = part(crossing & target_noise)
    frac_pure_c, loss_pure_c = part(~crossing & ~target_noise)
    frac_pure_n, loss_pure_n = part(~crossing & target_noise)
    # Lemma 1 with the same pure-window losses, but only over targets whose context does not cross:
    # what remains of the gap when Assumption 1 holds for every (context, token) pair used.
    pure = ~crossing
    pure_measured = float(losses[pure].mean()) if pure.any() else math.nan
    pure_alpha = float(target_noise[pure].mean()) if pure.any() else math.nan
    pure_pred = pure_alpha * loss_n + (1 - pure_alpha) * loss_c if pure.any() else math.nan
    return {
        "placement": mixed.noise["placement"],
        "alpha_manifest": float(mixed.noise["alpha_achieved"]),
        "alpha_windows": alpha_w,
        "measured_mixed_loss": measured,
        "noise_loss_pure": loss_n,
        "clean_loss_pure": loss_c,
        "lemma1_prediction": predicted,
        "gap": measured - predicted,
        "crossing_fraction": float(crossing.mean()),
        "crossing_clean_fraction": frac_cross_c,
        "crossing_clean_loss": loss_cross_c,
        "crossing_noise_fraction": frac_cross_n,
        "crossing_noise_loss": loss_cross_n,
        "pure_clean_fraction": frac_pure_c,
        "pure_clean_loss": loss_pure_c,
        "pure_noise_fraction": frac_pure_n,
        "pure_noise_loss": loss_pure_n,
        "gap_without_crossing": pure_measured - pure_pred,
    }


def lemma1_for_run(
    run: RunInfo, clean_data: Path, config: TheoryConfig, notes: list[str]
) -> list[dict[str, Any]]:
    """Lemma 1 rows for the run's final model: its own placement, and the other one when affordable."""
    from noisylm.shards import ShardSet

    mixed = ShardSet.open(run.data)
    model = load_model(run.checkpoints[max(run.checkpoints)], config.device)
    clean_tokens = ShardSet.open(clean_data).tokens("train")  # the clean text the noise was mixed into
    record = mixed.noise
    rows = [{"run": run.name, "sweep_placement": True, **lemma1_measure(model, mixed, clean_tokens, config)}]
    other = "interleave" if record["placement"] == "append" else "append"
    if record["clean_tokens"] > config.lemma1_max_tokens:
        notes.append(
            f"{run.name}: the {other} placement was not built ({record['clean_tokens']:,} clean tokens > "
            f"--lemma1-max-tokens {config.lemma1_max_tokens:,})"
        )
        return rows
    from noisylm.inject import inject

    # same clean text, noise kind, parameters and seed; only the placement differs
    with tempfile.TemporaryDirectory(prefix="noisylm-theory-") as tmp:
        extra = {}
        if other == "interleave" and record.get("placement_params"):
            extra = {k: record["placement_params"][k] for k in ("doc_median", "doc_sigma")}
        try:
            twin = inject(
                clean_data,
                Path(tmp) / "mixed",
                alpha=float(record["alpha_requested"]),
                kind=record["kind"],
                seed=int(record["seed"]),
                placement=other,
                params=run.params,
                progress=False,
                **extra,
            )
        except NoisyLMError as exc:
            notes.append(f"{run.name}: could not build the {other} placement ({exc})")
            return rows
        rows.append(
            {"run": run.name, "sweep_placement": False, **lemma1_measure(model, twin, clean_tokens, config)}
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Figures


def _figure(ncols: int = 1, width: float = 5.2, height: float = 3.6) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def fig9(folder: Path) -> tuple[str, str]:
    """Fig. 9: f(ε) and L(P^c, h) for α = 0.55, k = 1, L(P^c,h*) = 2.9, L(P^n,h*) = 2.8."""
    a, k = FIG9["alpha"], FIG9["k"]
    p_c, p_n = math.exp(-FIG9["clean_loss_ref"]), math.exp(-FIG9["noise_loss_ref"])
    prop = T.proposition1(a, k, p_c, p_n)
    eps = np.linspace(0.0, min(4 * prop.eta, 0.999 * p_c), 400)
    fig, (ax1, ax2) = _figure(2)
    ax1.plot(eps, T.f_gap(eps, a, k, p_c, p_n), color="C0")
    ax1.axhline(0, color="grey", linewidth=0.8)
    ax2.plot(eps, -np.log(p_c - eps), color="C1")
    for ax in (ax1, ax2):
        ax.axvline(prop.eta, color="C2", linestyle="--", label=f"η = {prop.eta:.4f}")
        ax.axvline(2 * prop.eta, color="C3", linestyle=":", label=f"2η = {2 * prop.eta:.4f} (bound)")
        ax.set_xlabel("ε")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("L(P^m,h*) − L(P^m,h)")
    ax1.set_title("(a) f(ε), Eq. 17")
    ax2.set_ylabel("L(P^c,h)")
    ax2.set_title("(b) clean loss")
    name = "fig9.png"
    _save(fig, folder / name)
    caption = (
        f"Fig. 9 (App. D.3), α = {a}, k = {k:g}, L(P^c,h*) = 2.9, L(P^n,h*) = 2.8: statement "
        f"({prop.statement}) applies, ε ≤ 2η = {2 * prop.eta:.5f}, so the clean loss rises by at most "
        f"{prop.clean_loss_increase_upper:.4f} nats (tight: {prop.clean_loss_increase_upper_exact:.4f}; "
        f"{prop.clean_loss_increase_optimum:.4f} at the optimum ε = η). "
        "The paper's text says 'no more than 0.1'."
    )
    return name, caption


def fig7a(folder: Path, curves: dict[str, list[EvalPoint]]) -> str:
    fig, (ax,) = _figure(1, 6.0, 3.8)
    for i, (name, points) in enumerate(curves.items()):
        iters = np.array([p.iter for p in points])
        k = np.array([p.k for p in points])
        lb = np.array([p.k_lower_bound for p in points])
        ax.plot(iters, k, marker="o", color=f"C{i}", label=f"{name}: k")
        ax.plot(iters, lb, linestyle="--", color=f"C{i}", alpha=0.6, label=f"{name}: Eq. 13 bound")
    ax.axhline(1, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("k = ε / (ε/k)")
    ax.set_title("(a) k over training (h* = the clean run at the same iteration)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, folder / "fig7a.png")
    return "fig7a.png"


def fig7b(folder: Path, rows: list[dict[str, Any]]) -> str | None:
    usable = [r for r in rows if "statement" in r]
    if not usable:
        return None
    fig, axes = _figure(len(usable), 4.4, 3.6)
    for ax, r in zip(axes, usable, strict=True):
        a, k, p_c, p_n = r["alpha"], r["k"], r["p_c"], r["p_n"]
        eps = np.geomspace(p_c * 1e-5, p_c * 0.999, 400)
        eps = eps[p_n + eps / k <= 1.0]
        ax.plot(eps, T.mixed_loss(eps, a, k, p_c, p_n), color="C0", label="L(P^m,h)")
        ax.axhline(T.mixed_loss(0.0, a, k, p_c, p_n), color="grey", linewidth=0.8, label="L(P^m,h*)")
        if r["eta"] > 0:
            ax.axvline(r["eta"], color="C2", linestyle="--", label="η")
        if r["measured_epsilon"] > 0:
            ax.axvline(r["measured_epsilon"], color="C3", linestyle=":", label="measured ε")
        ax.set_xscale("log")
        ax.set_xlabel("ε")
        ax.set_title(f"{r['run']}: α={a:.3g}, k={k:.3g}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("L(P^m,h) (nats)")
    _save(fig, folder / "fig7b.png")
    return "fig7b.png"


def fig_predicted(folder: Path, rows: list[dict[str, Any]]) -> str | None:
    usable = [r for r in rows if "statement" in r]
    if not usable:
        return None
    fig, (ax,) = _figure(1, max(4.0, 1.2 * len(usable) + 2), 3.6)
    x = np.arange(len(usable))
    bound = np.array([min(r["predicted_increase_bound"], 1e3) for r in usable])
    ax.bar(x - 0.2, bound, width=0.4, color="C0", alpha=0.6, label="Prop. 1 bound")
    ax.bar(
        x + 0.2, [r["measured_increase"] for r in usable], width=0.4, color="C3", alpha=0.8, label="measured"
    )
    ax.scatter(
        x - 0.2,
        [r["predicted_increase_optimum"] for r in usable],
        color="k",
        marker="_",
        s=200,
        label="at the optimum ε = η",
        zorder=3,
    )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x, [r["run"] for r in usable], rotation=20, fontsize=8)
    ax.set_ylabel("L(P^c,h) − L(P^c,h*) (nats)")
    ax.set_title("clean-loss increase: predicted by Prop. 1 vs measured")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    _save(fig, folder / "predicted_vs_measured.png")
    return "predicted_vs_measured.png"


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


# --------------------------------------------------------------------------------------------------
# Tables


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else format(value, spec)
    return str(value)


def write_table(folder: Path, stem: str, rows: list[dict[str, Any]], caption: str) -> dict[str, str]:
    """``stem.md`` (caption + pipe table) and ``stem.csv``; returns the section item."""
    import csv
    import io

    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _csv(row.get(c)) for c in columns])
    atomic_write_text(folder / f"{stem}.csv", buffer.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    atomic_write_text(folder / f"{stem}.md", f"{caption}\n\n" + "\n".join(md) + "\n")
    return {"type": "table", "path": f"{stem}.md", "csv": f"{stem}.csv", "caption": caption}


def _csv(value: Any) -> str:
    return format(value, ".8g") if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------------
# The section


def theory(sweep_dir: str | os.PathLike, config: TheoryConfig | None = None, **options: Any) -> Path:
    """Write ``sweep_dir/report/theory/`` (Prop. 1 and Lemma 1 against the runs) and rebuild
    ``report/index.html``; return the section folder. ``options`` are `TheoryConfig` fields."""
    if config is None:
        config = TheoryConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    root = Path(sweep_dir)
    meta, clean, noisy = load_sweep(root)
    import torch

    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _theory(root, config, clean, noisy)
    finally:
        torch.set_num_threads(threads)


def _theory(root: Path, config: TheoryConfig, clean: RunInfo, noisy: list[RunInfo]) -> Path:
    report_dir = root / "report"
    evaluator = _Evaluator(config)
    notes: list[str] = []

    curves: dict[str, list[EvalPoint]] = {}
    for run in _progress(noisy, "k over training"):
        curves[run.name] = k_over_training(clean, run, evaluator)
    predictions = [prediction_row(run, curves[run.name], config) for run in noisy]
    lemma_rows: list[dict[str, Any]] = []
    for run in _progress(noisy, "Lemma 1"):
        lemma_rows += lemma1_for_run(run, clean.data, config, notes)

    with atomic_dir(report_dir / SECTION, overwrite=True) as folder:
        items: list[dict[str, Any]] = [{"type": "text", "text": _intro(config)}]
        if any(curves.values()):
            items.append({"type": "figure", "path": fig7a(folder, curves), "caption": _caption_7a(curves)})
            k_rows = [{"run": n, **p.row()} for n, pts in curves.items() for p in pts]
            items.append(
                write_table(
                    folder,
                    "k_over_training",
                    k_rows,
                    "k over training (Fig. 7a): "
                    "losses of h* (ref) and h on the same windows, ε, ε/k, k, Eq. 13 bound.",
                )
            )
        name = fig7b(folder, predictions)
        if name:
            items.append({"type": "figure", "path": name, "caption": _CAPTION_7B})
        items.append(write_table(folder, "predicted_vs_measured", predictions, _CAPTION_PRED))
        name = fig_predicted(folder, predictions)
        if name:
            items.append(
                {
                    "type": "figure",
                    "path": name,
                    "caption": "Predicted (Prop. 1) vs measured clean-loss "
                    "increase per run; the bar is the bound, the tick the value at the optimum ε = η.",
                }
            )
        name, caption = fig9(folder)
        items.append({"type": "figure", "path": name, "caption": caption})
        if lemma_rows:
            items.append(write_table(folder, "lemma1", lemma_rows, _CAPTION_LEMMA1))
            items.append({"type": "text", "text": _lemma1_text(lemma_rows)})
        for note in notes:
            items.append({"type": "text", "text": f"Note: {note}"})
        atomic_write_json(
            folder / "theory.json",
            {
                "config": dataclasses.asdict(config),
                "k_over_training": {n: [p.row() for p in pts] for n, pts in curves.items()},
                "predicted_vs_measured": predictions,
                "fig9": T.proposition1(
                    FIG9["alpha"],
                    FIG9["k"],
                    math.exp(-FIG9["clean_loss_ref"]),
                    math.exp(-FIG9["noise_loss_ref"]),
                ).to_dict(),
                "lemma1": lemma_rows,
                "notes": notes,
                "provenance": provenance(dataclasses.asdict(config), config.seed),
            },
        )
        atomic_write_json(
            folder / "section.json",
            {
                "title": "Theory: Proposition 1 and Lemma 1 against the runs",
                "order": SECTION_ORDER,
                "items": items,
            },
        )
    from noisylm.report import write_index

    write_index(report_dir)
    return report_dir / SECTION


def _progress(items: list[Any], desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="run", leave=False)


def _intro(config: TheoryConfig) -> str:
    k = (
        f"k = {config.k:g} (supplied)"
        if config.k is not None
        else (
            f"k estimated at iteration {config.k_iter}"
            if config.k_iter is not None
            else "k estimated at the earliest common checkpoint where it is defined"
        )
    )
    return (
        "h* is the clean run and h each noisy run; every loss here comes from evaluating both checkpoints on "
        f"the same {config.eval_windows} windows of clean validation text and of the run's noise. "
        f"p_c = exp(−L(P^c,h*)), p_n = exp(−L(P^n,h*)), {k}. The formulas follow docs/theory.md, which "
        "corrects several typos of the printed appendix (Eqs. 11–13, 15, 19, 22, 29)."
    )


def _caption_7a(curves: dict[str, list[EvalPoint]]) -> str:
    finite = [p.k for pts in curves.values() for p in pts if math.isfinite(p.k)]
    span = f" k ranges from {min(finite):.3g} to {max(finite):.3g}." if finite else ""
    return (
        "Fig. 7(a): k over training; dashed: the lower bound of Eq. 13. Missing points: ε ≤ 0 or ε/k ≤ 0 "
        f"at that iteration (Prop. 1's premise fails, k is undefined).{span}"
    )


_CAPTION_7B = (
    "Fig. 7(b): L(P^m,h) = (1−α)(−log(p_c−ε)) + α(−log(p_n+ε/k)) against ε at each run's α, p_c, p_n (final "
    "checkpoint of h*) and k (early estimate). Its minimum lies at ε = max(η, 0); the dotted line is the ε "
    "measured at the final checkpoint."
)
_CAPTION_PRED = (
    "Predicted vs measured clean-loss increase L(P^c,h) − L(P^c,h*) at the last common checkpoint. "
    "predicted_increase_bound: the largest increase Prop. 1 allows (0 under statement 1; 3η / 2η under "
    "3a / 3b; the tight root of Eq. 17 otherwise); inside_bound: measured ≤ bound; inside_within_2se: "
    "measured − 2 standard errors (paired eval windows) ≤ bound. Prop. 1 is about the "
    "optimum of the hypothesis class; a finite run can sit above a bound of 0 simply because noise "
    "tokens displaced clean tokens from its budget."
)
_CAPTION_LEMMA1 = (
    "Lemma 1 on real data: the final noisy model's mean loss on windows of the mixed training shards "
    "(measured_mixed_loss) against α_w·L(P^n,h) + (1−α_w)·L(P^c,h) from pure noise and pure clean windows "
    "(lemma1_prediction); α_w is the share of noise targets in the drawn windows. crossing_*: targets whose "
    "context mixes clean and noise tokens, with their share and mean loss; gap_without_crossing: the gap "
    "left when only non-crossing targets are counted."
)


def _lemma1_text(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        parts.append(
            f"{r.get('run', '?')} ({r['placement']}): gap {r['gap']:+.4f} nats with "
            f"{r['crossing_fraction']:.1%} crossing targets; {r['gap_without_crossing']:+.4f} without them"
        )
    return (
        "Why the gap: Lemma 1 is exact for P^m = α P^n + (1−α) P^c (it is linearity of the expectation). A "
        "concatenated training stream is not that mixture at the level of (context, next token) pairs: "
        "targets whose context crosses a clean/noise boundary belong to neither supp(P^c) nor supp(P^n) "
        "(Assumption 1 fails for them), and the model predicts them differently (noise right after text, "
        "text right after noise). Appending the noise makes one boundary, interleaving makes many. "
        + "; ".join(parts)
        + "."
    )
