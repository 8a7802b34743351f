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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    provenance,
    sha256_file,
)
from noisylm.data.shards import MANIFEST, ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.plotting import save_png

DETECTORS = ("mixture", "unigram", "model")


@dataclass
class ScanConfig:
    """Detector settings (recorded in every artifact `scan` writes).

    detector: "mixture" (two-component unigram likelihood ratio, the default), "unigram" (surprisal
        under the corpus's own unigram distribution against a robust threshold) or "model" (per-token
        loss of a trained checkpoint; needs ``model``).
    window: tokens per scoring window. Noise spans much shorter than this are hard to see.
    stride: window step in tokens; also the resolution of the first, window-level pass. Divides window.
    iterations: hard-EM rounds of the mixture detector (re-estimate q_c, q_n from the segmentation).
    threshold: window-score threshold; None = automatic (0 for "mixture": equal likelihood; median +
        ``robust_z`` robust standard deviations for "unigram"; halfway to log V for "model").
    robust_z: how many robust standard deviations (1.4826·MAD) make a window feature an outlier.
    uniform_weight: share of the uniform distribution inside the noise model q_n (keeps q_n "random").
    smoothing: add-k pseudo-count of the unigram estimates.
    min_span: shortest span (tokens) kept after segmentation.
    min_score: smallest total log-likelihood ratio (nats) of a kept span.
    bigram: re-score candidate spans against a bigram model of the clean text (mixture detector):
        random noise has no sequential structure, text does, even text whose unigram statistics are
        unusual (names in capitals, runs of indentation), which a unigram mixture alone would flag.
    bigram_sample: at most this many tokens outside the candidate spans train the bigram model.
    candidate_margin: windows scoring within this margin below the threshold are re-checked with the
        bigram model too (structured noise such as mojibake can look text-like to a unigram model).
    split: which split to scan (noise is injected into "train").
    reference: optional shard set of trusted clean text (same tokenizer), e.g. a curated sample of the
        same source. Windows that uniform noise explains better than the reference's unigram
        distribution become extra seeds of the mixture; this finds heavy structured noise (mojibake at
        20%) whose tokens are frequent enough to look like part of "the corpus".
    reference_split: which split of ``reference`` to use.
    chunk_tokens: tokens read from the memmap at a time (bounds memory).
    model: checkpoint directory for the "model" detector.
    model_context: context length for the model's per-token loss (None = the model's block size).
    model_batch: windows per forward pass.
    device: torch device of the model.
    """

    detector: str = "mixture"
    window: int = 64
    stride: int = 16
    iterations: int = 3
    threshold: float | None = None
    robust_z: float = 6.0
    uniform_weight: float = 0.5
    smoothing: float = 0.01
    min_span: int = 32
    min_score: float = 8.0
    bigram: bool = True
    bigram_sample: int = 1 << 22
    candidate_margin: float = 1.5
    split: str = "train"
    reference: str | None = None
    reference_split: str = "train"
    chunk_tokens: int = 1 << 22
    model: str | None = None
    model_context: int | None = None
    model_batch: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise UsageError(f"unknown detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.detector == "model" and not self.model:
            raise UsageError("the model detector needs a checkpoint; pass --model CKPT")
        if self.model and self.detector != "model":
            self.detector = "model"  # --model implies the model detector
        if self.stride < 1 or self.window < self.stride or self.window % self.stride:
            raise UsageError(
                f"window={self.window} must be a positive multiple of stride={self.stride}; e.g. 64 and 16"
            )
        if self.iterations < 1:
            raise UsageError(f"iterations={self.iterations} must be >= 1")
        if not 0.0 < self.uniform_weight <= 1.0:
            raise UsageError(f"uniform_weight={self.uniform_weight} must lie in (0, 1]")
        if self.smoothing <= 0:
            raise UsageError(f"smoothing={self.smoothing} must be > 0")
        if self.robust_z <= 0:
            raise UsageError(f"robust_z={self.robust_z} must be > 0")
        if self.min_span < 1:
            raise UsageError(f"min_span={self.min_span} must be >= 1")
        if self.chunk_tokens < self.window:
            raise UsageError(f"chunk_tokens={self.chunk_tokens} must be >= window={self.window}")
        # whole windows per chunk, so window boundaries never straddle chunks
        self.chunk_tokens -= self.chunk_tokens % self.window


# ---------------------------------------------------------------------------------- streaming helpers
def _chunks(n: int, size: int) -> range:
    return range(0, n, size)


def unigram_counts(
    tokens: np.ndarray, vocab_size: int, chunk_tokens: int = 1 << 22, source: str = "the tokens"
) -> np.ndarray:
    """Token counts (int64, length ``vocab_size``) in one chunked pass over a memmap; an id outside
    the vocabulary means a corrupt shard and raises `NoisyLMError`."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in _chunks(len(tokens), chunk_tokens):
        chunk_counts = np.bincount(np.asarray(tokens[start : start + chunk_tokens]))
        if len(chunk_counts) > vocab_size:
            raise NoisyLMError(
                f"{source} hold token id {len(chunk_counts) - 1} >= vocab_size {vocab_size}; "
                "the shard set is corrupt, regenerate it"
            )
        counts[: len(chunk_counts)] += chunk_counts
    return counts


def _stride_sums(tokens: np.ndarray, table: np.ndarray, stride: int, chunk_tokens: int) -> np.ndarray:
    """Sum of ``table[token]`` over each stride-block of tokens (the last block may be short)."""
    n = len(tokens)
    out = np.empty((n + stride - 1) // stride, dtype=np.float64)
    table32 = table.astype(np.float32)
    for start in _chunks(n, chunk_tokens):
        values = table32[np.asarray(tokens[start : start + chunk_tokens])]
        full = len(values) - len(values) % stride
        first = start // stride
        out[first : first + full // stride] = values[:full].reshape(-1, stride).sum(axis=1, dtype=np.float64)
        if full < len(values):
            out[first + full // stride] = values[full:].sum(dtype=np.float64)
    return out


def _window_means(block_sums: np.ndarray, n: int, stride: int, window: int) -> np.ndarray:
    """Mean per-token score of each window (``window`` tokens, sliding by ``stride``)."""
    per = window // stride
    counts = np.full(len(block_sums), stride, dtype=np.float64)
    if n % stride:
        counts[-1] = n % stride
    if len(block_sums) <= per:
        return np.array([block_sums.sum() / max(counts.sum(), 1.0)])
    cs = np.concatenate([[0.0], np.cumsum(block_sums)])
    cc = np.concatenate([[0.0], np.cumsum(counts)])
    return (cs[per:] - cs[:-per]) / (cc[per:] - cc[:-per])


def _regions(flags: np.ndarray, n: int, stride: int, window: int) -> np.ndarray:
    """Token ranges [start, end) covered by flagged windows (overlapping/adjacent ones merged)."""
    per = window // stride
    n_blocks = (n + stride - 1) // stride
    idx = np.flatnonzero(flags)
    diff = np.bincount(idx, minlength=n_blocks + 1) - np.bincount(
        np.minimum(idx + per, n_blocks), minlength=n_blocks + 1
    )
    covered = np.cumsum(diff[:-1]) > 0
    edges = np.diff(np.concatenate([[0], covered.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1) * stride
    ends = np.minimum(np.flatnonzero(edges == -1) * stride, n)
    return np.stack([starts, ends], axis=1).astype(np.int64) if len(starts) else np.zeros((0, 2), np.int64)


def _best_segments(scores: np.ndarray, min_score: float, min_len: int) -> list[tuple[int, int]]:
    """Maximal-score segments of ``scores``: the max-sum subarray, then recursively left and right of it."""
    found: list[tuple[int, int]] = []
    stack = [(0, len(scores))]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < min_len:
            continue
        cs = np.concatenate([[0.0], np.cumsum(scores[lo:hi])])
        running_min = np.minimum.accumulate(cs)
        end = int(np.argmax(cs - running_min))
        start = int(np.argmin(cs[: end + 1]))
        if cs[end] - cs[start] <= min_score:
            continue
        if end - start >= min_len:
            found.append((lo + start, lo + end))
        stack.append((lo, lo + start))
        stack.append((lo + end, hi))
    return sorted(found)


def _merge_regions(regions: np.ndarray, margin: int, n: int) -> np.ndarray:
    """Widen token ranges by ``margin`` on both sides and merge the ones that then touch."""
    if len(regions) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.maximum(regions[:, 0] - margin, 0)
    hi = np.minimum(regions[:, 1] + margin, n)
    keep = np.concatenate([[True], lo[1:] > np.maximum.accumulate(hi)[:-1]])
    hi = np.maximum.reduceat(hi, np.flatnonzero(keep))
    return np.stack([lo[keep], hi], axis=1).astype(np.int64)


def _segment(
    regions: np.ndarray, token_scores: Callable[[int, int], np.ndarray], config: ScanConfig
) -> np.ndarray:
    """Token-exact spans [offset, length]: maximal-score segments of the per-token scores per region."""
    spans: list[tuple[int, int]] = []
    for a, b in regions.tolist():
        scores = token_scores(a, b)
        spans.extend((a + s, e - s) for s, e in _best_segments(scores, config.min_score, config.min_span))
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _span_counts(tokens: np.ndarray, spans: np.ndarray, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    batch: list[np.ndarray] = []
    size = 0
    for offset, length in spans.tolist():
        batch.append(np.asarray(tokens[offset : offset + length]))
        size += length
        if size >= 1 << 22:
            counts += np.bincount(np.concatenate(batch), minlength=vocab_size)[:vocab_size]
            batch, size = [], 0
    if batch:
        counts += np.bincount(np.concatenate(batch), minlength=vocab_size)[:vocab_size]
    return counts


# ------------------------------------------------------------------------------------ window features
@dataclass
class WindowFeatures:
    """Per aligned window (``window`` tokens): the model-free statistics the issue names."""

    surprisal: np.ndarray  # mean −log q(x) under the corpus unigram, nats
    distinct: np.ndarray  # distinct tokens / window length
    id_mean: np.ndarray  # mean token id
    id_std: np.ndarray  # standard deviation of the token ids

    def robust_z(self) -> dict[str, np.ndarray]:
        """(x − median) / (1.4826·MAD) of each feature: how far a window sits from the bulk."""
        out = {}
        for name, values in asdict(self).items():
            med, robust_std = _robust_location(values)
            out[name] = (values - med) / max(robust_std, 1e-6 * max(abs(med), 1.0), 1e-9)
        return out


MAX_QUANTILE_SAMPLE = 1 << 20


def _robust_location(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826·MAD), from an evenly strided sample of at most 2^20 values (fast on big corpora)."""
    sample = values[:: max(1, len(values) // MAX_QUANTILE_SAMPLE)]
    med = float(np.median(sample))
    return med, 1.4826 * float(np.median(np.abs(sample - med)))


def window_features(
    tokens: np.ndarray, surprisal_table: np.ndarray, window: int, chunk_tokens: int
) -> WindowFeatures:
    """Features of every aligned window (a tail shorter than a window has none; it is still scored)."""
    n = len(tokens)
    n_windows = max(n // window, 1)
    surprisal = np.empty(n_windows, np.float32)
    distinct = np.empty(n_windows, np.float32)
    id_mean = np.empty(n_windows, np.float32)
    id_std = np.empty(n_windows, np.float32)
    table32 = surprisal_table.astype(np.float32)
    if n < window:  # one short window
        x = np.asarray(tokens[:n])
        surprisal[0] = table32[x].mean() if n else 0.0
        distinct[0] = len(np.unique(x)) / max(n, 1)
        id_mean[0] = x.mean() if n else 0.0
        id_std[0] = x.std() if n else 0.0
        return WindowFeatures(surprisal, distinct, id_mean, id_std)
    for start in _chunks(n_windows * window, chunk_tokens):
        x = np.asarray(tokens[start : min(start + chunk_tokens, n_windows * window)]).reshape(-1, window)
        first = start // window
        rows = slice(first, first + len(x))
        surprisal[rows] = table32[x].mean(axis=1)
        ids = x.astype(np.float32)
        mean = ids.mean(axis=1)
        id_mean[rows] = mean
        id_std[rows] = np.sqrt(np.maximum((ids * ids).mean(axis=1) - mean * mean, 0.0))
        xs = np.sort(x, axis=1)
        distinct[rows] = (1 + (xs[:, 1:] != xs[:, :-1]).sum(axis=1)) / window
    return WindowFeatures(surprisal, distinct, id_mean, id_std)


# ------------------------------------------------------------------------------------- bigram model
@dataclass
class BigramModel:
    """Witten–Bell interpolated bigram model of clean text.

    p(b | a) = (c(a, b) + T(a)·q(b)) / (c(a) + T(a)), with c the pair counts, T(a) the number of distinct
    tokens seen after a, and q the clean unigram distribution (backoff; used alone when a was never seen).
    Pair counts are a dense V×V table for small vocabularies, else a hash table of the pair keys a·V + b.
    """

    vocab_size: int
    log_unigram: np.ndarray
    first_counts: np.ndarray
    followers: np.ndarray
    dense: np.ndarray | None = None
    pairs: int = 0
    pieces: np.ndarray | None = None  # [lo, hi) token ranges the counts came from
    exclude: np.ndarray | None = None  # [offset, length] spans whose pairs were skipped
    slot_keys: np.ndarray | None = None  # hash table of the pair keys (sparse path): key per slot, −1 empty
    slot_counts: np.ndarray | None = None
    overflow_keys: np.ndarray | None = None  # keys whose slot was taken (sorted), and their counts
    overflow_counts: np.ndarray | None = None

    def counted(self, lo: int, hi: int) -> np.ndarray:
        """Whether the pair (t−1, t) for each t in [lo, hi) is in the counts (for leave-one-out)."""
        first = max(lo - 1, 0)
        tokens_in = np.zeros(hi - first, dtype=bool)
        piece_start = np.zeros(hi - first, dtype=bool)
        if self.pieces is not None:
            for a, b in _overlapping(self.pieces[:, 0], self.pieces[:, 1], first, hi):
                tokens_in[max(a - first, 0) : b - first] = True
                if a >= first:
                    piece_start[a - first] = True
        if self.exclude is not None and len(self.exclude):
            starts, ends = self.exclude[:, 0], self.exclude[:, 0] + self.exclude[:, 1]
            for a, b in _overlapping(starts, ends, first, hi):
                tokens_in[max(a - first, 0) : b - first] = False
        pair_ok = tokens_in[:-1] & tokens_in[1:] & ~piece_start[1:]
        return pair_ok if lo > 0 else np.concatenate([[False], pair_ok])

    def pair_counts(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        key = prev.astype(np.int64) * self.vocab_size + cur
        if self.dense is not None:
            return self.dense[key]
        assert self.slot_keys is not None and self.slot_counts is not None
        slot = _hash_slots(key, len(self.slot_keys))
        counts = np.where(self.slot_keys[slot] == key, self.slot_counts[slot], 0)
        # a key can only be in the overflow when its slot holds another key
        probe = np.flatnonzero((self.slot_keys[slot] != key) & (self.slot_keys[slot] >= 0))
        if len(probe) and self.overflow_keys is not None and len(self.overflow_keys):
            idx = np.minimum(np.searchsorted(self.overflow_keys, key[probe]), len(self.overflow_keys) - 1)
            hit = self.overflow_keys[idx] == key[probe]
            counts[probe[hit]] = self.overflow_counts[idx[hit]]
        return counts

    def log_prob(self, prev: np.ndarray, cur: np.ndarray, held_out: np.ndarray | None = None) -> np.ndarray:
        """log p(cur | prev), element-wise; where ``held_out``, the pair's own occurrence is removed from
        the counts first (leave-one-out), so a pair is never explained by itself."""
        counts = self.pair_counts(prev, cur).astype(np.float64)
        first = self.first_counts[prev].astype(np.float64)
        followers = self.followers[prev].astype(np.float64)
        if held_out is not None:
            own = held_out & (counts > 0)
            followers = followers - (own & (counts == 1))
            counts = counts - own
            first = first - own
        backoff = np.exp(self.log_unigram[cur])
        denom = first + followers
        prob = np.where(denom > 0, (counts + followers * backoff) / np.maximum(denom, 1.0), backoff)
        return np.log(prob)


DENSE_BIGRAM_MAX_VOCAB = 4096
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing


def _hash_slots(keys: np.ndarray, size: int) -> np.ndarray:
    """Slot of each key in a table of ``size`` (a power of two) slots."""
    bits = np.uint64(64 - int(size).bit_length() + 1)
    with np.errstate(over="ignore"):
        return ((keys.astype(np.uint64) * _HASH_MULTIPLIER) >> bits).astype(np.int64)


def _overlapping(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
    """The [start, end) intervals (sorted, disjoint) that overlap [lo, hi)."""
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(starts, hi, side="left"))
    return list(zip(starts[first:last].tolist(), ends[first:last].tolist(), strict=True))


def fit_bigram(
    tokens: np.ndarray,
    exclude: np.ndarray,
    log_unigram: np.ndarray,
    sample_tokens: int = 1 << 22,
    piece_tokens: int = 1 << 14,
) -> BigramModel:
    """Bigram counts over at most ``sample_tokens`` tokens (evenly spaced pieces), skipping every pair
    that touches an ``exclude`` span (the current noise estimate), so the model describes clean text."""
    n, vocab = len(tokens), len(log_unigram)
    if n <= sample_tokens:
        pieces = [(0, n)]
    else:
        count = max(sample_tokens // piece_tokens, 1)
        starts = np.linspace(0, n - piece_tokens, count).astype(np.int64)
        pieces = [(int(p), int(p) + piece_tokens) for p in starts]
    dense = vocab <= DENSE_BIGRAM_MAX_VOCAB
    table = np.zeros(vocab * vocab, dtype=np.int64) if dense else None
    collected: list[np.ndarray] = []
    for lo, hi in pieces:
        x = np.asarray(tokens[lo:hi]).astype(np.int64)
        positions = np.arange(lo, hi + 1, dtype=np.int64)
        # a token is excluded when a span covers it: coverage(t + 1) − coverage(t) = 1
        excluded = np.diff(_coverage(exclude, positions)) > 0 if len(exclude) else np.zeros(len(x), bool)
        ok = ~(excluded[:-1] | excluded[1:])
        keys = x[:-1][ok] * vocab + x[1:][ok]
        if dense:
            table += np.bincount(keys, minlength=vocab * vocab)
        else:
            collected.append(keys)
    if dense:
        assert table is not None
        pair_table = table.reshape(vocab, vocab)
        return BigramModel(
            vocab_size=vocab,
            log_unigram=log_unigram,
            first_counts=pair_table.sum(axis=1),
            followers=(pair_table > 0).sum(axis=1),
            dense=table,
            pairs=int(table.sum()),
            pieces=np.asarray(pieces, dtype=np.int64),
            exclude=exclude,
        )
    all_keys = np.concatenate(collected) if collected else np.zeros(0, np.int64)
    keys, key_counts = np.unique(all_keys, return_counts=True)
    first_tokens = keys // vocab
    # direct-mapped hash table (load <= 1/4) for O(1) lookups; colliding keys go to a sorted overflow
    size = 1 << max(int(np.ceil(np.log2(max(len(keys), 1) * 4))), 4)
    slots = _hash_slots(keys, size)
    _, first_of_slot = np.unique(slots, return_index=True)
    in_table = np.zeros(len(keys), dtype=bool)
    in_table[first_of_slot] = True
    slot_keys = np.full(size, -1, dtype=np.int64)
    slot_counts = np.zeros(size, dtype=np.int64)
    slot_keys[slots[in_table]] = keys[in_table]
    slot_counts[slots[in_table]] = key_counts[in_table]
    return BigramModel(
        vocab_size=vocab,
        log_unigram=log_unigram,
        first_counts=np.bincount(first_tokens, weights=key_counts, minlength=vocab).astype(np.int64),
        followers=np.bincount(first_tokens, minlength=vocab),
        slot_keys=slot_keys,
        slot_counts=slot_counts,
        overflow_keys=keys[~in_table],
        overflow_counts=key_counts[~in_table],
        pairs=len(all_keys),
        pieces=np.asarray(pieces, dtype=np.int64),
        exclude=exclude,
    )


def _refine_with_bigram(
    tokens: np.ndarray,
    spans: np.ndarray,
    log_qn: np.ndarray,
    bigram: BigramModel,
    threshold: float,
    config: ScanConfig,
) -> np.ndarray:
    """Re-segment around candidate spans with score log q_n(x_t) − log p_c(x_t | x_{t−1})."""
    ranges = np.stack([spans[:, 0], spans[:, 0] + spans[:, 1]], axis=1)
    regions = _merge_regions(ranges, config.window, len(tokens))

    def scores(a: int, b: int) -> np.ndarray:
        x = np.asarray(tokens[max(a - 1, 0) : b]).astype(np.int64)
        held_out = bigram.counted(a, b)
        log_pc = bigram.log_prob(x[:-1], x[1:], held_out if a > 0 else held_out[1:])
        if a == 0:  # the corpus's first token has no predecessor
            log_pc = np.concatenate([bigram.log_unigram[x[:1]], log_pc])
            cur = x
        else:
            cur = x[1:]
        return log_qn[cur] - log_pc - threshold

    return _segment(regions, scores, config)


# ------------------------------------------------------------------------------------------ detectors
@dataclass
class Detection:
    """What a detector found: token spans, the score of every sliding window, the threshold."""

    spans: np.ndarray  # int64 [n, 2]: offset, length (sorted, disjoint)
    window_scores: np.ndarray  # mean per-token score of each sliding window
    threshold: float  # windows above it were flagged
    score_name: str  # what the window score is, for plots and reports
    details: dict[str, Any] = field(default_factory=dict)


def _log_unigram(counts: np.ndarray, smoothing: float) -> np.ndarray:
    counts = counts.astype(np.float64) + smoothing
    return np.log(counts / counts.sum())


def _feature_outliers(features: WindowFeatures, z: float, log_vocab: float) -> np.ndarray:
    """Aligned windows whose features put them far from the bulk, or that uniform noise explains better."""
    zs = features.robust_z()
    flags = features.surprisal > log_vocab  # uniform noise beats the corpus unigram (LLR > 0)
    flags |= zs["surprisal"] > z
    for name in ("distinct", "id_mean", "id_std"):
        flags |= np.abs(zs[name]) > z
    return flags


def _windows_to_spans(flags: np.ndarray, window: int, n: int) -> np.ndarray:
    idx = np.flatnonzero(flags)
    spans = np.stack([idx * window, np.full(len(idx), window)], axis=1).astype(np.int64)
    if len(spans) and flags.shape[0] * window < n and flags[-1]:
        spans[-1, 1] = n - spans[-1, 0]
    return spans.reshape(-1, 2)


def _detect_with_table(
    tokens: np.ndarray, table: np.ndarray, threshold: float, config: ScanConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Window scores of a per-token score table, then token-exact spans of (table − threshold)."""
    n = len(tokens)
    sums = _stride_sums(tokens, table, config.stride, config.chunk_tokens)
    scores = _window_means(sums, n, config.stride, config.window)
    regions = _merge_regions(_regions(scores > threshold, n, config.stride, config.window), config.stride, n)
    shifted = table - threshold
    spans = _segment(regions, lambda a, b: shifted[np.asarray(tokens[a:b])], config)
    return spans, scores


def detect_mixture(
    tokens: np.ndarray,
    counts: np.ndarray,
    features: WindowFeatures,
    config: ScanConfig,
    reference_counts: np.ndarray | None = None,
) -> Detection:
    """Hard EM on a two-component unigram mixture (clean q_c, noise q_n); score = log q_n − log q_c."""
    vocab = len(counts)
    n = len(tokens)
    log_uniform = -math.log(vocab)
    seed_flags = _feature_outliers(features, config.robust_z, -log_uniform)
    reference_seeds = 0
    if reference_counts is not None:  # uniform noise beats the reference's unigram on the window
        ref_surprisal = -_log_unigram(reference_counts, config.smoothing)
        sums = _stride_sums(
            tokens[: len(seed_flags) * config.window], ref_surprisal, config.window, config.chunk_tokens
        )
        by_reference = sums / config.window > -log_uniform
        reference_seeds = int((by_reference & ~seed_flags[: len(by_reference)]).sum())
        seed_flags[: len(by_reference)] |= by_reference
    spans = _windows_to_spans(seed_flags, config.window, n)
    threshold = 0.0 if config.threshold is None else config.threshold
    history = []
    table = np.zeros(vocab)
    scores = np.zeros(0)
    log_qc = log_qn = np.full(vocab, log_uniform)
    for _ in range(config.iterations):
        noise_counts = _span_counts(tokens, spans, vocab)
        clean_counts = counts - noise_counts
        log_qc = _log_unigram(clean_counts, config.smoothing)
        w = config.uniform_weight
        if noise_counts.sum() > 0:
            learned = _log_unigram(noise_counts, config.smoothing)
            log_qn = np.logaddexp(math.log(w) + log_uniform, math.log1p(-w) + learned) if w < 1 else learned
        else:
            log_qn = np.full(vocab, log_uniform)
        table = log_qn - log_qc
        previous = int(spans[:, 1].sum())
        spans, scores = _detect_with_table(tokens, table, threshold, config)
        flagged = int(spans[:, 1].sum())
        history.append({"flagged_tokens": flagged, "spans": len(spans)})
        if len(history) > 1 and abs(flagged - previous) <= 1e-3 * max(previous, 1):
            break  # converged
    candidates = spans
    bigram_info: dict[str, Any] = {}
    if config.bigram and len(spans):
        # lenient candidates: windows within candidate_margin of the threshold, plus the current spans
        lenient = _regions(scores > threshold - config.candidate_margin, n, config.stride, config.window)
        ranges = np.concatenate([lenient, np.stack([spans[:, 0], spans[:, 0] + spans[:, 1]], axis=1)])
        ranges = _merge_regions(ranges[np.argsort(ranges[:, 0], kind="stable")], 0, n)
        candidates = np.stack([ranges[:, 0], ranges[:, 1] - ranges[:, 0]], axis=1)
        for _ in range(2):  # the clean bigram model skips the current noise estimate, then re-fits once
            bigram = fit_bigram(tokens, spans, log_qc, config.bigram_sample)
            spans = _refine_with_bigram(tokens, candidates, log_qn, bigram, threshold, config)
        bigram_info = {
            "pairs": bigram.pairs,
            "candidate_tokens": int(candidates[:, 1].sum()),
            "candidate_spans": len(candidates),
            "kept_tokens": int(spans[:, 1].sum()),
        }
    return Detection(
        spans=spans,
        window_scores=scores,
        threshold=threshold,
        score_name="mean log q_n(x) - log q_c(x) per token (nats)",
        details={
            "seed_windows": int(seed_flags.sum()),
            "reference_seed_windows": reference_seeds,
            "em_history": history,
            "bigram": bigram_info,
            "score_table_range": [float(table.min()), float(table.max())],
        },
    )


def detect_unigram(tokens: np.ndarray, counts: np.ndarray, config: ScanConfig) -> Detection:
    """Surprisal under the corpus's own unigram distribution; threshold = median + z robust std."""
    surprisal = -_log_unigram(counts, config.smoothing)
    n = len(tokens)
    sums = _stride_sums(tokens, surprisal, config.stride, config.chunk_tokens)
    scores = _window_means(sums, n, config.stride, config.window)
    if config.threshold is None:
        med, robust_std = _robust_location(scores)
        threshold = med + config.robust_z * robust_std
    else:
        threshold = config.threshold
    regions = _merge_regions(_regions(scores > threshold, n, config.stride, config.window), config.stride, n)
    shifted = surprisal - threshold
    spans = _segment(regions, lambda a, b: shifted[np.asarray(tokens[a:b])], config)
    return Detection(spans, scores, threshold, "mean unigram surprisal per token (nats)")


# ----------------------------------------------------------------------------------- truth metrics
def _coverage(spans: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Number of span tokens before each point (spans sorted and disjoint)."""
    if len(spans) == 0:
        return np.zeros(len(points), dtype=np.int64)
    starts = spans[:, 0]
    ends = spans[:, 0] + spans[:, 1]
    cum = np.concatenate([[0], np.cumsum(spans[:, 1])])
    i = np.searchsorted(starts, points, side="left")
    partial = np.where(i > 0, np.maximum(ends[np.maximum(i - 1, 0)] - points, 0), 0)
    return cum[i] - partial


def span_metrics(predicted: np.ndarray, truth: np.ndarray, n_tokens: int) -> dict[str, float]:
    """Token-level precision, recall, F1 of ``predicted`` spans against ``truth`` spans, and α̂ vs α."""
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.int64).reshape(-1, 2)
    if len(predicted):
        inside = _coverage(truth, predicted[:, 0] + predicted[:, 1]) - _coverage(truth, predicted[:, 0])
        overlap = int(inside.sum())
    else:
        overlap = 0
    flagged = int(predicted[:, 1].sum())
    true = int(truth[:, 1].sum())
    precision = overlap / flagged if flagged else (1.0 if true == 0 else 0.0)
    recall = overlap / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    alpha = true / n_tokens if n_tokens else 0.0
    alpha_hat = flagged / n_tokens if n_tokens else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alpha": alpha,
        "alpha_hat": alpha_hat,
        "alpha_rel_error": abs(alpha_hat - alpha) / alpha if alpha else float(alpha_hat > 0),
        "true_tokens": true,
        "flagged_tokens": flagged,
        "overlap_tokens": overlap,
    }


# ------------------------------------------------------------------------------------ model detector
def _load_model(checkpoint: str | os.PathLike, device: str) -> tuple[Any, int]:
    """(GPT in eval mode, vocab size) from a checkpoint or a run directory (its newest checkpoint)."""
    from noisylm.training.checkpoint import load_model

    model, _, _ = load_model(checkpoint, device=device)
    model.eval()
    return model, int(model.config.vocab_size)


def model_token_losses(
    model: Any, tokens: np.ndarray, context: int, batch: int, device: str, progress: bool | None
) -> np.ndarray:
    """Per-token next-token loss (nats, float32) of every token but the first, context ``context``.

    Non-overlapping windows of ``context`` + 1 tokens; each window's first token has no loss, so it
    is scored as the previous window's last target (windows overlap by one token)."""
    import torch
    from tqdm import tqdm

    n = len(tokens)
    losses = np.zeros(n, dtype=np.float32)
    starts = list(range(0, max(n - 1, 0), context))
    with torch.no_grad():
        for i in tqdm(range(0, len(starts), batch), desc="model loss", disable=not progress):
            group = starts[i : i + batch]
            rows = [np.asarray(tokens[s : s + context + 1]).astype(np.int64) for s in group]
            width = max(len(r) for r in rows)
            x = np.zeros((len(rows), width), dtype=np.int64)
            valid = np.zeros((len(rows), width - 1), dtype=bool)
            for j, row in enumerate(rows):
                x[j, : len(row)] = row
                valid[j, : len(row) - 1] = True
            idx = torch.from_numpy(x[:, :-1]).to(device)
            tgt = torch.from_numpy(x[:, 1:]).to(device)
            out = model.token_losses(idx, tgt).float().cpu().numpy()
            for j, s in enumerate(group):
                count = int(valid[j].sum())
                losses[s + 1 : s + 1 + count] = out[j, :count]
    return losses


def detect_model(tokens: np.ndarray, losses: np.ndarray, vocab_size: int, config: ScanConfig) -> Detection:
    """Per-token model loss; random noise sits near log V. Threshold: halfway from the median window
    loss to log V, unless given."""
    n = len(tokens)
    per = config.stride
    padded = np.zeros(((n + per - 1) // per) * per, dtype=np.float64)
    padded[:n] = losses
    sums = padded.reshape(-1, per).sum(axis=1)
    scores = _window_means(sums, n, config.stride, config.window)
    log_vocab = math.log(vocab_size)
    threshold = config.threshold
    if threshold is None:
        threshold = 0.5 * (_robust_location(scores)[0] + log_vocab)
    regions = _merge_regions(_regions(scores > threshold, n, config.stride, config.window), config.stride, n)
    shifted = losses.astype(np.float64) - threshold
    spans = _segment(regions, lambda a, b: shifted[a:b], config)
    return Detection(
        spans, scores, threshold, "mean model loss per token (nats)", details={"log_vocab": log_vocab}
    )


# ------------------------------------------------------------------------------------ the prediction
PAPER_RELATIVE_INCREASE = 0.002 / 0.05  # the paper (Sec. 3.2): 5% random noise -> +0.2% clean NTP loss
K_GRID = (10.0, 100.0, 1000.0, 10000.0)


def predict_cost(
    alpha_hat: float, clean_loss: float, noise_loss: float, k: float, basis: str
) -> dict[str, Any]:
    """Prop. 1 (via `noisylm.theory.formulas`) at α̂: the clean-loss increase if the noise is kept.

    p_c = exp(−clean_loss), p_n = exp(−noise_loss) (losses of the model, or of the clean unigram model
    when no model is given: ``basis`` says which); k is not measurable from one corpus, so the
    prediction is given for ``k`` and for a grid of k.
    """
    from noisylm.theory import formulas as theory

    out: dict[str, Any] = {
        "alpha_hat": alpha_hat,
        "clean_loss": clean_loss,
        "noise_loss": noise_loss,
        "basis": basis,
        "k": k,
        "paper_rule_of_thumb": {
            "relative_increase_per_alpha": PAPER_RELATIVE_INCREASE,
            "predicted_relative_increase": PAPER_RELATIVE_INCREASE * alpha_hat,
            "source": "paper Sec. 3.2: 5% random noise raised GPT-2 124M's clean loss by 0.2%",
        },
    }
    if not (0.0 < alpha_hat < 1.0 and math.isfinite(clean_loss) and math.isfinite(noise_loss)):
        out.update(increase_nats=0.0, increase_relative=0.0, statement=None, grid=[])
        out["clean_loss"] = clean_loss if math.isfinite(clean_loss) else None
        out["noise_loss"] = noise_loss if math.isfinite(noise_loss) else None
        out["note"] = "no noise flagged: nothing to predict" if alpha_hat == 0 else "all tokens flagged"
        return out
    p_c, p_n = math.exp(-clean_loss), math.exp(-noise_loss)
    grid = []
    for kk in sorted({*K_GRID, float(k)}):
        prop = theory.proposition1(alpha_hat, kk, p_c, p_n)
        bound = theory.predicted_clean_loss_increase(alpha_hat, kk, p_c, p_n, kind="bound")
        optimum = theory.predicted_clean_loss_increase(alpha_hat, kk, p_c, p_n, kind="optimum")
        grid.append(
            {
                "k": kk,
                "statement": prop.statement,
                "eta": prop.eta,
                "alpha_star": prop.alpha_star,
                "increase_optimum_nats": optimum if math.isfinite(optimum) else None,  # inf: no bound
                "increase_bound_nats": bound if math.isfinite(bound) else None,
            }
        )
    headline = next(g for g in grid if g["k"] == float(k))
    out.update(
        statement=headline["statement"],
        increase_nats=headline["increase_optimum_nats"],
        increase_bound_nats=headline["increase_bound_nats"],
        increase_relative=(
            headline["increase_optimum_nats"] / clean_loss
            if clean_loss > 0 and headline["increase_optimum_nats"] is not None
            else None
        ),
        grid=grid,
    )
    return out


# ---------------------------------------------------------------------------------------- filtering
def write_filtered(
    shards: ShardSet, spans: np.ndarray, out: str | os.PathLike, record: dict[str, Any], overwrite: bool
) -> Path:
    """A copy of ``shards`` without the ``spans`` of its train split (atomic); the manifest's ``filter``
    record lists every removed span and the detector settings."""
    itemsize = shards.dtype.itemsize
    total = shards.splits["train"].tokens
    ends = spans[:, 0] + spans[:, 1]
    keep_starts = np.concatenate([[0], ends])
    keep_ends = np.concatenate([spans[:, 0], [total]])
    kept = 0
    documents = 0
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shards.copy_tokenizer_to(tmp)
        digest = hashlib.sha256()
        with (
            open(shards.path / shards.splits["train"].file, "rb") as src,
            open(tmp / "train.bin", "wb") as dst,
        ):
            for lo, hi in zip(keep_starts.tolist(), keep_ends.tolist(), strict=True):
                src.seek(lo * itemsize)
                remaining = hi - lo
                while remaining > 0:
                    data = src.read(min(remaining, 1 << 22) * itemsize)
                    dst.write(data)
                    digest.update(data)
                    documents += int(
                        np.count_nonzero(np.frombuffer(data, dtype=shards.dtype) == shards.eot_id)
                    )
                    remaining -= len(data) // itemsize
                    kept += len(data) // itemsize
        splits = {
            "train": {
                "file": "train.bin",
                "tokens": kept,
                "documents": documents,
                "sha256": digest.hexdigest(),
            }
        }
        for name, info in shards.splits.items():
            if name in ("train", "noise"):
                continue
            shutil.copyfile(shards.path / info.file, tmp / info.file)
            splits[name] = dict(shards.manifest["splits"][name])
        parent_noise = shards.noise
        manifest = {
            **{k: v for k, v in shards.manifest.items() if k not in ("provenance", "noise", "filter")},
            "splits": splits,
            "noise": None,
            "filter": {
                **record,
                "parent": {
                    "path": str(shards.path),
                    "manifest_sha256": sha256_file(shards.path / MANIFEST),
                    "train_sha256": shards.splits["train"].sha256,
                    "train_tokens": total,
                    "noise": None
                    if parent_noise is None
                    else {k: parent_noise.get(k) for k in ("kind", "placement", "alpha_achieved", "seed")},
                },
                "removed_tokens": int(total - kept),
                "removed_spans": spans.tolist(),
            },
            "provenance": provenance(record.get("detector"), None),
        }
        # the removed spans on one line, as the noise spans are (a manifest stays readable at 10^5 spans)
        marker = "__NOISYLM_REMOVED_SPANS__"
        manifest["filter"]["removed_spans"] = marker
        text = json.dumps(manifest, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        compact = json.dumps(spans.tolist(), separators=(",", ":"))
        atomic_write_text(tmp / MANIFEST, text.replace(json.dumps(marker), compact, 1) + "\n")
    return Path(out)


# --------------------------------------------------------------------------------------------- scan
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
    source = str(shards.path / shards.splits[config.split].file)
    bar.set_postfix_str("unigram counts")
    counts = unigram_counts(tokens, vocab, config.chunk_tokens, source)
    surprisal = -_log_unigram(counts, config.smoothing)
    bar.update()
    bar.set_postfix_str("window features")
    features = window_features(tokens, surprisal, config.window, config.chunk_tokens)
    bar.update()
    bar.set_postfix_str(f"{config.detector} detector")
    model_losses = None
    if config.detector == "model":
        assert config.model is not None
        model, model_vocab = _load_model(config.model, config.device)
        if model_vocab != vocab:
            raise NoisyLMError(
                f"model {config.model} has vocab_size {model_vocab} but the shards' tokenizer "
                f"{shards.tokenizer!r} has {vocab}; scan with a model trained on this tokenizer"
            )
        context = config.model_context or int(model.config.block_size)
        model_losses = model_token_losses(model, tokens, context, config.model_batch, config.device, progress)
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
            reference_counts = unigram_counts(
                np.asarray(reference.tokens(config.reference_split)),
                vocab,
                config.chunk_tokens,
                config.reference,
            )
        detection = detect_mixture(tokens, counts, features, config, reference_counts)
    bar.update()
    bar.set_postfix_str("report")
    spans = detection.spans
    flagged = int(spans[:, 1].sum())
    alpha_hat = flagged / n
    noise_counts = _span_counts(tokens, spans, vocab)
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
        log_qc = _log_unigram(clean_counts, 1.0)  # Laplace: a model that gives every token some mass
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
        med, robust_std = _robust_location(values)
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
        inside = _coverage(true_spans, ends) - _coverage(true_spans, starts)
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


# ------------------------------------------------------------------------------------------ validate
VALIDATION_KINDS = ("uniform", "boosted", "gaussian", "mojibake")
VALIDATION_PLACEMENTS = ("append", "interleave")
VALIDATION_ALPHAS = (0.01, 0.05, 0.2)
LONG_SPAN = 64  # the targets are for noise spans of at least this many tokens


def validate(
    clean_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    kinds: tuple[str, ...] = VALIDATION_KINDS,
    placements: tuple[str, ...] = VALIDATION_PLACEMENTS,
    alphas: tuple[float, ...] = VALIDATION_ALPHAS,
    seed: int = 0,
    config: ScanConfig | None = None,
    keep: bool = False,
) -> list[dict[str, Any]]:
    """Scan `noisylm inject` corpora made from ``clean_dir`` (known truth) and return one row per
    (kind, placement, α): precision, recall, F1 of flagged tokens, α̂ vs α, recall on true spans of at
    least 64 tokens. The first row is the clean corpus itself (its α̂ is the false-positive rate).
    Corpora are written under ``work_dir`` and deleted after scanning unless ``keep``."""
    from noisylm.data.injection import inject

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    config = config or ScanConfig()
    clean = ShardSet.open(clean_dir)
    report = scan(clean.path, work / "clean-scan", config=config, overwrite=True, progress=False)
    rows = [
        {
            "tokenizer": clean.tokenizer,
            "kind": "none (clean)" if config.reference is None else "none (clean) + reference",
            "placement": "-",
            "alpha": 0.0,
            "alpha_hat": report["alpha_hat"],
            "seconds": report["seconds"],
            "tokens": report["tokens"],
        }
    ]
    for kind in kinds:
        for placement in placements:
            for alpha in alphas:
                name = f"{kind}-{placement}-{alpha:g}"
                noisy = work / name
                inject(clean.path, noisy, alpha=alpha, kind=kind, placement=placement, seed=seed,
                       overwrite=True, progress=False)  # fmt: skip
                report = scan(noisy, work / f"{name}-scan", config=config, overwrite=True, progress=False)
                truth = dict(report["truth"])
                true_spans = ShardSet.open(noisy).noise_spans()
                long_spans = true_spans[true_spans[:, 1] >= LONG_SPAN]
                spans = np.asarray(report["spans"], dtype=np.int64).reshape(-1, 2)
                long_metrics = span_metrics(spans, long_spans, report["tokens"])
                rows.append(
                    {
                        "tokenizer": clean.tokenizer,
                        "kind": kind if config.reference is None else f"{kind} + reference",
                        "placement": placement,
                        "alpha": truth["alpha"],
                        "alpha_hat": truth["alpha_hat"],
                        "alpha_rel_error": truth["alpha_rel_error"],
                        "precision": truth["precision"],
                        "recall": truth["recall"],
                        "f1": truth["f1"],
                        "recall_long": long_metrics["recall"],
                        "true_spans": len(true_spans),
                        "short_span_tokens": int(true_spans[true_spans[:, 1] < LONG_SPAN, 1].sum()),
                        "seconds": report["seconds"],
                        "tokens": report["tokens"],
                    }
                )
                if not keep:
                    shutil.rmtree(noisy, ignore_errors=True)
                    shutil.rmtree(work / f"{name}-scan", ignore_errors=True)
    if not keep:
        shutil.rmtree(work / "clean-scan", ignore_errors=True)
    return rows


def validation_markdown(rows: list[dict[str, Any]]) -> str:
    """The validation rows as a Markdown table (targets: F1 >= 0.95, |α̂ − α|/α <= 0.10)."""
    lines = [
        "| tokenizer | kind | placement | α | α̂ | \\|α̂−α\\|/α | precision | recall | F1 "
        "| recall (spans ≥ 64) | meets targets | scan s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "f1" not in r:
            lines.append(
                f"| {r['tokenizer']} | {r['kind']} | - | 0 | {r['alpha_hat']:.4%} | - | - | - | - | - | "
                f"false positives | {r['seconds']:.1f} |"
            )
            continue
        ok = r["f1"] >= 0.95 and r["alpha_rel_error"] <= 0.10
        lines.append(
            f"| {r['tokenizer']} | {r['kind']} | {r['placement']} | {r['alpha']:.2%} | "
            f"{r['alpha_hat']:.2%} | {r['alpha_rel_error']:.3f} | {r['precision']:.4f} | "
            f"{r['recall']:.4f} | {r['f1']:.4f} | "
            f"{r['recall_long']:.4f} | {'yes' if ok else '**no**'} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"
