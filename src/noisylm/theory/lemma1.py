"""Lemma 1 on real shards: the final noisy model's loss on windows of the actual mixed training data
against α·L(P^n,h) + (1−α)·L(P^c,h), both sides measured on the same target tokens.

The prediction gives each target a pure context of the same length (`counterpart_losses`), so the gap is
exactly the effect of contexts that cross a clean/noise boundary: such (context, next-token) pairs belong
to neither P^c nor P^n, so Eq. 1 — and with it Lemma 1 — does not hold for a concatenated stream. Their
expected share and excess loss are reported too, since uniform windows rarely draw them. `lemma1_for_run`
does this for the sweep's placement and the other one (append / interleave, re-injected with the same
noise and seed into a temporary folder).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.errors import NoisyLMError
from noisylm.theory.config import TheoryConfig
from noisylm.theory.measure import window_starts
from noisylm.theory.runs import RunInfo


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


def pure_coordinates(spans: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Where mixed ``train.bin`` positions sit in their pure stream: the index in ``noise.bin`` for a noise
    token, in the clean text (train.bin without the spans) for a clean token."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(spans) == 0:
        return positions.copy()
    offsets, lengths = spans[:, 0], spans[:, 1]
    before = np.concatenate([[0], np.cumsum(lengths)])  # noise tokens before span i
    i = np.searchsorted(offsets, positions, side="right") - 1  # the last span starting at or before p
    safe = np.clip(i, 0, None)
    noise_before = np.where(i >= 0, before[safe] + np.minimum(positions - offsets[safe], lengths[safe]), 0)
    inside = (i >= 0) & (positions - offsets[safe] < lengths[safe])
    return np.where(inside, noise_before, positions - noise_before)


def counterpart_losses(
    model: Any,
    losses: np.ndarray,
    starts: np.ndarray,
    labels: np.ndarray,
    spans: np.ndarray,
    streams: tuple[np.ndarray, np.ndarray],
    config: TheoryConfig,
) -> np.ndarray:
    """ℓ': each target's loss with a *pure* context of the same length, from its own stream.

    Targets whose context does not cross a boundary keep their loss (the context is already pure). For a
    run of same-kind tokens that starts at window index r > 0, the counterpart window is the r tokens that
    precede the run in its pure stream (the clean text, or ``noise.bin``) followed by the run, so every
    target keeps its position and context length; only the kind of the context changes. A run at the very
    start of its stream (e.g. appended noise: ``noise.bin`` begins at the boundary) takes its context from
    the stream's end (the window wraps around): still pure text, or pure noise. NaN only for a stream
    shorter than one window.
    """
    from noisylm.training.evaluate import token_losses  # torch: only here

    block = losses.shape[1]
    out = losses.copy()
    new_run = labels[:, 1:] != labels[:, :-1]  # token r (1..T) starts a run of the other kind
    wins, rs = np.nonzero(new_run)
    rs = rs + 1
    if len(wins) == 0:
        return out
    q = pure_coordinates(spans, starts[wins] + rs)
    cp_starts = q - rs
    kinds = labels[wins, rs]
    jobs: list[tuple[int, int, int, bool, int]] = []  # (window, first target, end target, kind, row)
    batches: dict[bool, list[int]] = {False: [], True: []}
    for w, r, st, kind in zip(wins, rs, cp_starts, kinds, strict=True):
        following = np.nonzero(new_run[w, r:])[0]  # the next run start after r, if any
        stop = r + 1 + int(following[0]) if len(following) else block + 1  # token index where the run ends
        if len(streams[int(kind)]) < block + 1:
            out[w, r - 1 : stop - 1] = np.nan
            continue
        jobs.append((int(w), r - 1, stop - 1, bool(kind), len(batches[bool(kind)])))
        batches[bool(kind)].append(int(st))
    rows = {
        kind: token_losses(model, streams[int(kind)], np.array(st), batch_size=config.batch_size, wrap=True)
        for kind, st in batches.items()
        if st
    }
    for w, lo, hi, kind, row in jobs:
        out[w, lo:hi] = rows[kind][row, lo:hi]
    return out


def expected_crossing_fraction(spans: np.ndarray, n_tokens: int, block: int) -> float:
    """The exact share of targets whose context crosses a clean/noise boundary, over windows drawn
    uniformly (starts 0 .. n_tokens − block − 1): target j of the window at s crosses iff a run of the
    stream ends in (s, s + j + 1]."""
    if len(spans) == 0:
        return 0.0
    n_starts = n_tokens - block
    edges = np.unique(np.concatenate([[0], spans[:, 0], spans[:, 0] + spans[:, 1], [n_tokens]]))
    run_start, boundary = edges[:-2], edges[1:-1]  # every run but the last ends at a boundary
    d = np.arange(1, block + 1)[None, :]
    lo = np.maximum(run_start[:, None], boundary[:, None] - d)
    hi = np.minimum(boundary[:, None], n_starts)
    return float(np.clip(hi - lo, 0, None).sum() / (block * n_starts))


def _boundary_starts(spans: np.ndarray, n_tokens: int, block: int, n: int, seed: int) -> np.ndarray:
    """Starts of ``n`` windows that each straddle a clean/noise boundary (boundary at index 1..T)."""
    edges = np.concatenate([spans[:, 0], spans[:, 0] + spans[:, 1]]) if len(spans) else np.zeros(0, np.int64)
    edges = edges[(edges > 0) & (edges < n_tokens)]
    if len(edges) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    starts = rng.choice(edges, size=n) - rng.integers(1, block + 1, size=n)
    return np.sort(np.clip(starts, 0, n_tokens - block - 1))


def lemma1_measure(model: Any, mixed: Any, clean_tokens: np.ndarray, config: TheoryConfig) -> dict[str, Any]:
    """Lemma 1 for one model and one mixed shard set (``mixed``: a `ShardSet` with noise spans).

    measured_mixed_loss: the mean loss over all targets of windows drawn uniformly from the mixed
    ``train.bin``; α_w: the share of noise targets in them. lemma1_prediction: α_w·L(P^n,h) +
    (1−α_w)·L(P^c,h), with both losses measured *on the same tokens at the same positions* but with a pure
    context (`counterpart_losses`), so the gap is exactly the effect of boundary-crossing contexts.
    Also: the same prediction from independent pure windows (what one would naively measure), the exact
    expected share of crossing targets, their mean excess loss measured on windows that straddle a
    boundary, and the expected gap = share × excess.
    """
    from noisylm.training.evaluate import token_losses  # torch: only here

    block, bs = model.config.block_size, config.batch_size
    train, spans = mixed.tokens("train"), mixed.noise_spans()
    noise_tokens = mixed.tokens("noise")
    streams = (clean_tokens, noise_tokens)

    def measure(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        labels = noise_labels(spans, starts, block + 1)
        losses = token_losses(model, train, starts, batch_size=bs)
        return (
            losses,
            counterpart_losses(model, losses, starts, labels, spans, streams, config),
            labels[:, 1:],
            (crossing_targets(labels)),
        )

    losses, paired, target_noise, crossing = measure(
        window_starts(len(train), block, config.lemma1_windows, config.seed + 1)
    )
    ok = np.isfinite(paired)
    alpha_w = float(target_noise[ok].mean())
    loss_n = float(paired[ok & target_noise].mean()) if (ok & target_noise).any() else math.nan
    loss_c = float(paired[ok & ~target_noise].mean()) if (ok & ~target_noise).any() else math.nan
    measured = float(losses[ok].mean())
    predicted = float(paired[ok].mean())  # = α_w·loss_n + (1 − α_w)·loss_c
    n_ind = token_losses(
        model,
        noise_tokens,
        window_starts(len(noise_tokens), block, config.lemma1_windows, config.seed + 2),
        batch_size=bs,
    )
    c_ind = token_losses(
        model,
        clean_tokens,
        window_starts(len(clean_tokens), block, config.lemma1_windows, config.seed + 3),
        batch_size=bs,
    )
    predicted_ind = alpha_w * float(n_ind.mean()) + (1 - alpha_w) * float(c_ind.mean())

    # crossing targets are rare in uniform windows: measure their excess loss where they are
    b_starts = _boundary_starts(spans, len(train), block, config.lemma1_windows, config.seed + 4)
    excess: dict[str, float | None] = {"all": None, "clean": None, "noise": None}
    if len(b_starts):
        b_losses, b_paired, b_noise, b_cross = measure(b_starts)
        valid = b_cross & np.isfinite(b_paired)
        for name, mask in (("all", valid), ("clean", valid & ~b_noise), ("noise", valid & b_noise)):
            if mask.any():
                excess[name] = float((b_losses[mask] - b_paired[mask]).mean())
    expected_cross = expected_crossing_fraction(spans, len(train), block)
    return {
        "placement": mixed.noise["placement"],
        "noise_spans": int(len(spans)),
        "alpha_manifest": float(mixed.noise["alpha_achieved"]),
        "alpha_windows": alpha_w,
        "measured_mixed_loss": measured,
        "noise_loss_paired": loss_n,
        "clean_loss_paired": loss_c,
        "lemma1_prediction": predicted,
        "gap": measured - predicted,
        "lemma1_prediction_independent": predicted_ind,
        "gap_independent": measured - predicted_ind,
        "crossing_fraction_sampled": float(crossing[ok].mean()),
        "crossing_fraction_expected": expected_cross,
        "crossing_excess_loss": excess["all"],
        "crossing_excess_clean": excess["clean"],
        "crossing_excess_noise": excess["noise"],
        "expected_gap": None if excess["all"] is None else expected_cross * excess["all"],
        "unpaired_targets": int((~ok).sum()),
    }


def lemma1_for_run(
    run: RunInfo, clean_data: Path, config: TheoryConfig, notes: list[str]
) -> list[dict[str, Any]]:
    """Lemma 1 rows for the run's final model: its own placement, and the other one when affordable."""
    from noisylm.data.shards import ShardSet
    from noisylm.training.evaluate import load_eval_model  # torch: only here

    mixed = ShardSet.open(run.data)
    model = load_eval_model(run.checkpoints[max(run.checkpoints)], config.device).model
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
    from noisylm.data.injection import inject

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
