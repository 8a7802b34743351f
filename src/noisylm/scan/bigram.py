"""A leave-one-out Witten–Bell bigram model of the clean text, and the re-check of candidate spans with it:
random noise has no sequential structure, text with odd unigram statistics does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisylm.scan.config import ScanConfig
from noisylm.scan.segmentation import coverage, merge_regions, segment


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
        excluded = np.diff(coverage(exclude, positions)) > 0 if len(exclude) else np.zeros(len(x), bool)
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


def refine_with_bigram(
    tokens: np.ndarray,
    spans: np.ndarray,
    log_qn: np.ndarray,
    bigram: BigramModel,
    threshold: float,
    config: ScanConfig,
) -> np.ndarray:
    """Re-segment around candidate spans with score log q_n(x_t) − log p_c(x_t | x_{t−1})."""
    ranges = np.stack([spans[:, 0], spans[:, 0] + spans[:, 1]], axis=1)
    regions = merge_regions(ranges, config.window, len(tokens))

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

    return segment(regions, scores, config)
