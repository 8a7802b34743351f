"""Find random-noise spans in a token corpus, estimate their proportion α̂, and filter them on request.

The question users bring is "do I need to filter my data?". `scan` answers it for a prepared shard set:

1. **Model-free detectors** (numpy over memmaps, in chunks, bounded memory). Per window of tokens:
   surprisal under the corpus's own unigram distribution, distinct-token ratio, token-id mean and
   spread. Random noise has (almost) no overlap with the support of clean text (the paper's
   Assumption 1), so these features put noise windows far outside the bulk of the clean windows.
2. **Two-component unigram mixture** (default detector ``mixture``). Clean text and noise are modelled
   by two unigram distributions, q_c and q_n; a token's score is the log-likelihood ratio
   ``log q_n(x) − log q_c(x)`` and a window's score is the mean over its tokens (> 0: noise is the
   likelier explanation). q_n starts as the paper's uniform noise plus what the features flag, and both
   are re-estimated a few times from the current segmentation (hard EM). q_n keeps half its mass on the
   uniform distribution, so a handful of odd clean windows cannot turn into a "noise" model of text.
3. **Token-exact spans**. Windows slide with a stride of ``stride`` tokens; runs of flagged windows
   become candidate regions, and inside each region the spans are the maximal-score segments of the
   per-token scores (max-sum subarray, applied recursively), so span edges are placed at token level.
4. **Bigram re-check**. A unigram mixture cannot tell random noise from text with odd unigram
   statistics (speaker names in capitals, runs of indentation). Candidate regions are re-scored with
   ``log q_n(x_t) − log p_c(x_t | x_{t−1})``, p_c a leave-one-out Witten–Bell bigram model of the clean
   text: text is predictable from the previous token, random noise is not.
5. With ``model=CKPT`` the per-token loss of a trained model replaces the unigram score: random noise
   sits near log V, clean text far below; the threshold is halfway between the median window loss and
   log V.

`scan` writes ``scan.json``, ``scan.md`` and ``scan.png`` (histogram of window scores with the
threshold), compares with the true spans when the shard set was made by ``noisylm inject``, predicts
through Prop. 1 (`noisylm.theory.formulas`) what keeping the noise would cost, and with ``filter_out``
writes a filtered shard set whose manifest records every removed span and the detector settings.

The pieces, in the order `scan` uses them: `config` (`ScanConfig`) → `ShardSet.token_counts` and
`streaming` (chunked passes over the memmap) → `features` (window features) → `detectors` (mixture,
unigram; `segmentation` turns flagged windows into token-exact spans, `bigram` re-checks them) or
`model_detector` → `truth` (against the true spans) → `pricing` (Prop. 1) → `filtering` (``--filter``);
this module runs them and writes the report.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir, provenance
from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.plotting import save_png
from noisylm.scan.config import ScanConfig
from noisylm.scan.detectors import detect_mixture, detect_unigram
from noisylm.scan.features import MAX_QUANTILE_SAMPLE, robust_location, window_features
from noisylm.scan.filtering import write_filtered
from noisylm.scan.model_detector import detect_model, model_token_losses
from noisylm.scan.pricing import predict_cost
from noisylm.scan.segmentation import coverage
from noisylm.scan.streaming import log_unigram, span_counts
from noisylm.scan.truth import span_metrics


def default_out(shard_dir: str | os.PathLike) -> Path:
    """Where `scan` writes its report by default: a sibling ``<name>-scan`` of the shard directory."""
    path = Path(shard_dir)
    return path.with_name(f"{path.name}-scan")


def scan(
    shard_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    config: ScanConfig | None = None,
    filter_out: str | os.PathLike | None = None,
    overwrite: bool = False,
    k: float = 1000.0,
    progress: bool | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Scan ``shard_dir`` for random-noise spans; write ``scan.json``, ``scan.md``, ``scan.png`` to ``out``.

    ``config`` (or keyword ``overrides`` of its fields, e.g. ``window=128``) sets the detector;
    ``filter_out`` also writes a filtered shard set; ``k`` is Prop. 1's k for the headline prediction.
    Returns the report (the content of ``scan.json``).

    >>> report = scan("data/noisy", "data/noisy-scan")
    >>> report["alpha_hat"], report["truth"]["f1"]   # truth only for sets made by `noisylm inject`
    """
    if config is None:
        config = ScanConfig(**overrides)
    elif overrides:
        config = ScanConfig(**{**asdict(config), **overrides})
    if not (k > 0 and math.isfinite(k)):
        raise UsageError(f"k={k} must be a positive finite number (Prop. 1's k, e.g. 1000)")
    shards = ShardSet.open(shard_dir)
    out = Path(out) if out is not None else default_out(shards.path)
    check_output_dir(out, overwrite)
    if filter_out is not None:
        filter_out = Path(filter_out)
        if filter_out.resolve() in (shards.path.resolve(), out.resolve()):
            raise UsageError(
                f"--filter {filter_out} must differ from the scanned set and the report directory"
            )
        check_output_dir(filter_out, overwrite)
    if config.split not in shards.splits:
        raise NoisyLMError(
            f"shard set {shards.path} has no split {config.split!r}; choose one of {', '.join(shards.splits)}"
        )
    if filter_out is not None and config.split != "train":
        raise UsageError("--filter removes spans from the train split; scan with --split train")
    tokens = np.asarray(shards.tokens(config.split))  # a plain view of the memmap: cheap slices, no copy
    n = len(tokens)
    if n == 0:
        raise NoisyLMError(f"split {config.split!r} of {shards.path} is empty; nothing to scan")
    from tqdm import tqdm

    started = time.perf_counter()
    bar = tqdm(
        total=4,
        desc=f"scan {shards.path.name}",
        unit="step",
        disable=not progress if progress is not None else None,
    )
    vocab = shards.vocab_size
    bar.set_postfix_str("unigram counts")
    counts = shards.token_counts(config.split, config.chunk_tokens)
    surprisal = -log_unigram(counts, config.smoothing)
    bar.update()
    bar.set_postfix_str("window features")
    features = window_features(tokens, surprisal, config.window, config.chunk_tokens)
    bar.update()
    bar.set_postfix_str(f"{config.detector} detector")
    model_losses = None
    if config.detector == "model":
        model_losses = model_token_losses(tokens, config, vocab, shards.tokenizer, progress)
        detection = detect_model(tokens, model_losses, vocab, config)
    elif config.detector == "unigram":
        detection = detect_unigram(tokens, counts, config)
    else:
        reference_counts = None
        if config.reference is not None:
            reference = ShardSet.open(config.reference)
            if (reference.tokenizer, reference.vocab_size) != (shards.tokenizer, vocab):
                raise NoisyLMError(
                    f"--reference {config.reference} uses tokenizer {reference.tokenizer!r} "
                    f"(V={reference.vocab_size}), the scanned set {shards.tokenizer!r} (V={vocab}); "
                    "prepare the reference with the same tokenizer"
                )
            reference_counts = reference.token_counts(config.reference_split, config.chunk_tokens)
        detection = detect_mixture(tokens, counts, features, config, reference_counts)
    bar.update()
    bar.set_postfix_str("report")
    spans = detection.spans
    flagged = int(spans[:, 1].sum())
    alpha_hat = flagged / n
    noise_counts = span_counts(tokens, spans, vocab)
    clean_counts = counts - noise_counts
    if model_losses is not None:
        in_span = np.zeros(n, dtype=bool)
        for o, length in spans.tolist():
            in_span[o : o + length] = True
        has_loss = np.ones(n, dtype=bool)
        has_loss[0] = False  # the first token has no context, hence no loss
        clean = has_loss & ~in_span
        noisy = has_loss & in_span
        clean_loss = float(model_losses[clean].mean()) if clean.any() else float("nan")
        noise_loss = float(model_losses[noisy].mean()) if noisy.any() else float("nan")
        basis = f"model {config.model}"
    else:
        log_qc = log_unigram(clean_counts, 1.0)  # Laplace: a model that gives every token some mass
        clean_loss = float(-(clean_counts * log_qc).sum() / max(clean_counts.sum(), 1))
        noise_loss = float(-(noise_counts * log_qc).sum() / flagged) if flagged else float("nan")
        basis = (
            "unigram model of the unflagged tokens (add-one smoothing): an upper bound on a model's losses"
        )
    if not math.isfinite(noise_loss):
        noise_loss = clean_loss
    prediction = predict_cost(alpha_hat, clean_loss, noise_loss, k, basis)
    seconds = time.perf_counter() - started

    truth = None
    true_spans = None
    if config.split == "train" and shards.noise is not None:
        true_spans = shards.noise_spans()
        truth = span_metrics(spans, true_spans, n)
        truth["kind"] = shards.noise.get("kind")
        truth["placement"] = shards.noise.get("placement")
        truth["alpha_achieved"] = shards.noise.get("alpha_achieved")

    zs = features.robust_z()
    feature_summary = {}
    for name, values in asdict(features).items():
        med, robust_std = robust_location(values)
        feature_summary[name] = {
            "median": med,
            "robust_std": robust_std,
            "outlier_windows": int((np.abs(zs[name]) > config.robust_z).sum()),
        }
    scores = detection.window_scores
    report: dict[str, Any] = {
        "shard_dir": str(shards.path),
        "split": config.split,
        "tokenizer": shards.tokenizer,
        "vocab_size": vocab,
        "tokens": n,
        "alpha_hat": alpha_hat,
        "flagged_tokens": flagged,
        "kept_tokens": n - flagged,
        "num_spans": len(spans),
        "verdict": _verdict(alpha_hat, prediction),
        "detector": asdict(config),
        "threshold": detection.threshold,
        "score": detection.score_name,
        "window_scores": {
            "windows": len(scores),
            "flagged": int((scores > detection.threshold).sum()),
            "quantiles": {  # from an evenly strided sample, like every robust statistic here
                str(q): float(np.quantile(scores[:: max(1, len(scores) // MAX_QUANTILE_SAMPLE)], q))
                for q in (0.01, 0.5, 0.99)
            },
        },
        "features": feature_summary,
        "details": detection.details,
        "truth": truth,
        "prediction": prediction,
        "seconds": seconds,
        "filter": None,
        "spans": spans.tolist(),
        "provenance": provenance(asdict(config), None),
    }
    if filter_out is not None:
        record = {"detector": asdict(config), "alpha_hat": alpha_hat, "scan_report": str(out / "scan.json")}
        write_filtered(shards, spans, filter_out, record, overwrite)
        report["filter"] = {"out": str(filter_out), "removed_tokens": flagged, "kept_tokens": n - flagged}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _plot(scores, detection.threshold, detection.score_name, tmp / "scan.png", true_spans, n, config)
        atomic_write_text(tmp / "scan.md", _markdown(report))
        atomic_write_json(tmp / "scan.json", report)
    bar.update()
    bar.close()
    report["out"] = str(out)
    return report


def _nats(value: float | None) -> str:
    return "no bound" if value is None else f"{value:.4g}"


def _verdict(alpha_hat: float, prediction: dict[str, Any]) -> str:
    if alpha_hat == 0:
        return "no random-noise spans found: nothing to filter"
    share = f"{100 * alpha_hat:.3g}% of the tokens look like random noise"
    saves = f"filtering saves {100 * alpha_hat:.3g}% of the training tokens"
    grid = prediction.get("grid") or []
    headline = next((g for g in grid if g["k"] == prediction["k"]), None)
    if headline is None:
        return f"{share}; {saves}"
    if headline["statement"] == "1":
        cost = (
            f"α̂ is below Prop. 1's threshold α* = {headline['alpha_star']:.3g} (k = {prediction['k']:g}), "
            "so keeping it leaves the clean-loss optimum unchanged"
        )
    else:
        rel = prediction.get("increase_relative")
        rel_text = f", {100 * rel:.3g}%" if rel is not None else ""
        bound = _nats(headline["increase_bound_nats"])
        cost = (
            f"keeping it is predicted to raise the clean loss by {_nats(prediction.get('increase_nats'))} "
            f"nats{rel_text} (Prop. 1, k = {prediction['k']:g}; bound {bound})"
        )
    rule = prediction["paper_rule_of_thumb"]["predicted_relative_increase"]
    return f"{share}; {cost} (the paper's 5% → +0.2% scales to ≈ +{100 * rule:.2g}% here); {saves}"


def _markdown(report: dict[str, Any]) -> str:
    pred = report["prediction"]
    lines = [
        f"# noisylm scan: `{report['shard_dir']}` ({report['split']})",
        "",
        f"**{report['verdict']}**",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| tokens scanned | {report['tokens']:,} ({report['tokenizer']}, V = {report['vocab_size']:,}) |",
        f"| estimated noise proportion α̂ | {report['alpha_hat']:.4%} |",
        f"| flagged tokens / spans | {report['flagged_tokens']:,} / {report['num_spans']:,} |",
        f"| detector | {report['detector']['detector']} (window {report['detector']['window']}, "
        f"stride {report['detector']['stride']}) |",
        f"| window score | {report['score']} |",
        f"| threshold | {report['threshold']:.4g} |",
        f"| windows above threshold | {report['window_scores']['flagged']:,} of "
        f"{report['window_scores']['windows']:,} |",
        f"| scan time | {report['seconds']:.2f} s |",
        "",
    ]
    truth = report.get("truth")
    if truth:
        lines += [
            "## Against the true spans (manifest of `noisylm inject`)",
            "",
            "| kind | placement | α | α̂ | |α̂−α|/α | precision | recall | F1 |",
            "|---|---|---|---|---|---|---|---|",
            f"| {truth['kind']} | {truth['placement']} | {truth['alpha']:.4f} | {truth['alpha_hat']:.4f} | "
            f"{truth['alpha_rel_error']:.3f} | {truth['precision']:.4f} | {truth['recall']:.4f} | "
            f"{truth['f1']:.4f} |",
            "",
        ]
    lines += ["## Cost of keeping the noise (Prop. 1 through `noisylm.theory.formulas`)", ""]
    if pred.get("grid"):
        lines += [
            f"Losses ({pred['basis']}): clean {pred['clean_loss']:.4g} nats, "
            f"noise {pred['noise_loss']:.4g} nats. "
            "k cannot be measured from one corpus; the table gives the prediction for several k "
            f"(headline k = {pred['k']:g}).",
            "",
            "| k | statement | η | α* | increase at the optimum (nats) | upper bound (nats) |",
            "|---|---|---|---|---|---|",
        ]
        for g in pred["grid"]:
            lines.append(
                f"| {g['k']:g} | {g['statement']} | {g['eta']:.3g} | {g['alpha_star']:.3g} | "
                f"{_nats(g['increase_optimum_nats'])} | {_nats(g['increase_bound_nats'])} |"
            )
        rule = pred["paper_rule_of_thumb"]
        lines += [
            "",
            f"Paper's measurement for comparison: {rule['source']}; at α̂ that is a relative increase of "
            f"{100 * rule['predicted_relative_increase']:.3g}%.",
            "",
        ]
    else:
        lines += [pred.get("note", "nothing to predict"), ""]
    if report.get("filter"):
        f = report["filter"]
        lines += [
            "## Filtered shard set",
            "",
            f"`{f['out']}`: {f['kept_tokens']:,} tokens kept, {f['removed_tokens']:,} removed "
            "(every removed span and the detector settings are in its manifest's `filter` record).",
            "",
        ]
    spans = report["spans"]
    if spans:
        lines += ["## Flagged spans (first 20; all in scan.json)", "", "| offset | length |", "|---|---|"]
        lines += [f"| {o:,} | {length:,} |" for o, length in spans[:20]]
        lines.append("")
    lines += ["![window scores](scan.png)", ""]
    return "\n".join(lines)


def _plot(
    scores: np.ndarray,
    threshold: float,
    score_name: str,
    path: Path,
    true_spans: np.ndarray | None,
    n: int,
    config: ScanConfig,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    step = max(1, len(scores) // MAX_QUANTILE_SAMPLE)  # an evenly strided sample keeps the shape
    index = np.arange(0, len(scores), step, dtype=np.int64)
    scores = scores[index]
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    lo, hi = min(lo, threshold), max(hi, threshold)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 101)
    if true_spans is not None and len(true_spans):
        starts = index * config.stride
        ends = np.minimum(starts + config.window, n)
        inside = coverage(true_spans, ends) - coverage(true_spans, starts)
        noisy = inside * 2 > (ends - starts)
        ax.hist(
            finite[~noisy[np.isfinite(scores)]], bins=bins, color="tab:blue", alpha=0.7, label="clean windows"
        )
        ax.hist(
            finite[noisy[np.isfinite(scores)]],
            bins=bins,
            color="tab:red",
            alpha=0.7,
            label="noise windows (truth)",
        )
    else:
        ax.hist(finite, bins=bins, color="tab:blue", alpha=0.8, label="windows")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel(f"window score: {score_name}")
    ax.set_ylabel("windows" if step == 1 else f"windows (every {step}th)")
    ax.set_title(f"scan: {config.detector} detector, window {config.window}, stride {config.stride}")
    ax.legend(loc="upper right", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.13)  # fixed: tight_layout is slow
    save_png(fig, path, dpi=120)
    plt.close(fig)
