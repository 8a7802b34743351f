"""Noise generators: token ids drawn from a seed, in [0, V).

``V`` (``vocab_size`` below) is the exclusive upper bound of the sampled ids. `inject` passes the
number of ordinary tokens: every id except the end-of-text id when that is the last one, so
V = 50256 for GPT-2 (exactly the paper's "[0, 50256)") and V = 256 for the bytes tokenizer.

Kinds and their parameters (defaults in brackets; the resolved values are recorded in the manifest):

- ``uniform``: i.i.d. uniform over [0, V) (the paper's random noise, Sec. 3.1).
- ``boosted``: the paper's real-world-like noise (Sec. 3.1, App. D.1, Fig. 8b): uniform, plus
  ``num_boosted`` [100 for GPT-2; V // 16 for small vocabularies] token ids whose probability is
  multiplied by a factor drawn log-uniformly in [``boost_min``, ``boost_max``] = [5, 50];
  a share ``low_fraction`` [0.8] of them is drawn from the low ids [0, ``low_ids``) [1000 for GPT-2,
  scaled by V / 50256 otherwise], the rest from the other ids. So p(i) = m_i / sum_j m_j with
  m_i = 1 for ordinary ids. The chosen ids and factors are recorded.
- ``gaussian``: N(``mean``, ``std``) rounded to the nearest integer and clipped to [0, V - 1]; for
  GPT-2 (V = 50256) the paper's N(25128, 500) (Sec. 3.3), otherwise mean V / 2, std V / 100.
- ``mojibake``: realistic decoding-error noise. Fragments of real text (``text``: a bundled corpus
  name or a path [python-docs]) of log-uniform length in [64, 2048] bytes are turned into bytes one
  way and decoded another, then tokenized with the shard set's tokenizer. ``variants`` lists
  ``"SOURCE->CODEC"`` pairs, chosen uniformly per fragment: SOURCE ``utf8`` (the text's UTF-8 bytes),
  ``gzip`` (the text gzip-compressed, as when a crawler stores a compressed response as text) or
  ``random`` (uniform random bytes); CODEC any Python codec, decoding with ``errors="replace"``.
  Default: utf8->utf-16-le, utf8->cp037, gzip->cp1252, gzip->gbk, random->gbk, random->shift_jis,
  random->big5, random->koi8_r, random->utf-8, random->cp1252. (utf8->latin-1 or ->cp1252 are
  allowed but leave ASCII text unchanged.)
- ``histogram``: i.i.d. from a user token histogram: ``histogram`` is a .npy file (1-D counts or
  probabilities, index = token id) or a .json file (a list like that, or {"id": count}).
- ``corpus``: real text of another domain as the "noise": the training tokens of the prepared shard
  set ``source`` (same tokenizer), read in order from a seeded random document start, wrapping
  around when more tokens are needed (``passes`` records how often). End-of-text ids are kept.

`make_sampler` returns a `NoiseSampler`: ``sample(n)`` continues one stream from its generator, and
for the kinds without stream state (uniform, boosted, gaussian, histogram) ``sample_with(rng, n)``
draws from any generator. `inject` uses that to draw chunk k of the noise from the k-th child of
its noise seed, several chunks at a time on threads, with bounded memory; `generate_noise` is the
one-shot form (so its output for a seed is not the same sequence `inject` writes for that seed).
"""

from __future__ import annotations

import gzip
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.errors import NoisyLMError, UsageError

NOISE_KINDS = ("uniform", "boosted", "gaussian", "mojibake", "histogram", "corpus")
GPT2_NOISE_VOCAB = 50256  # the paper's V: GPT-2's ids without end-of-text

DEFAULT_MOJIBAKE = (
    "utf8->utf-16-le",
    "utf8->cp037",
    "gzip->cp1252",
    "gzip->gbk",
    "random->gbk",
    "random->shift_jis",
    "random->big5",
    "random->koi8_r",
    "random->utf-8",
    "random->cp1252",
)


class NoiseSampler:
    """One seeded stream of noise ids. ``params`` are the resolved, JSON-ready parameters."""

    kind: str

    def __init__(self, vocab_size: int, rng: np.random.Generator):
        self.vocab_size = vocab_size
        self.rng = rng
        self.dtype = np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)
        self.params: dict[str, Any] = {"vocab_range": [0, vocab_size]}

    # True when draws depend only on the generator passed in (no stream state), so chunks of a long
    # stream can be drawn in parallel from independent child generators (see `inject`).
    independent_chunks = False

    def sample(self, n: int) -> np.ndarray:
        """The next ``n`` ids of this sampler's stream."""
        return self.sample_with(self.rng, n)

    def sample_with(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError


class UniformSampler(NoiseSampler):
    independent_chunks = True
    kind = "uniform"

    def sample_with(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.vocab_size, size=n, dtype=self.dtype)


class BoostedSampler(NoiseSampler):
    independent_chunks = True
    kind = "boosted"

    def __init__(
        self,
        vocab_size: int,
        rng: np.random.Generator,
        num_boosted: int | None = None,
        low_ids: int | None = None,
        low_fraction: float = 0.8,
        boost_min: float = 5.0,
        boost_max: float = 50.0,
    ):
        super().__init__(vocab_size, rng)
        V = vocab_size
        if num_boosted is None:
            num_boosted = 100 if V >= 1600 else max(1, V // 16)
        if not 1 <= num_boosted <= V:
            raise UsageError(f"num_boosted={num_boosted} must be in [1, {V}]")
        if not 0.0 <= low_fraction <= 1.0:
            raise UsageError(f"low_fraction={low_fraction} must be in [0, 1]")
        if not 1.0 <= boost_min <= boost_max:
            raise UsageError(f"need 1 <= boost_min ({boost_min}) <= boost_max ({boost_max})")
        n_low = round(low_fraction * num_boosted)
        if low_ids is None:
            low_ids = round(1000 * V / GPT2_NOISE_VOCAB)
        low_ids = min(V, max(int(low_ids), n_low))
        n_high = min(num_boosted - n_low, V - low_ids)
        low = rng.choice(low_ids, size=n_low, replace=False)
        high = low_ids + rng.choice(V - low_ids, size=n_high, replace=False) if n_high else np.zeros(0, int)
        self.ids = np.concatenate([low, high]).astype(np.int64)
        self.factors = np.exp(rng.uniform(math.log(boost_min), math.log(boost_max), size=len(self.ids)))
        extra = self.factors - 1.0
        # p(i) = m_i / (V + sum(m - 1)): a mixture of uniform (weight V) and the extras (weight sum(m - 1))
        self.p_extra = float(extra.sum() / (V + extra.sum()))
        self.extra_cdf = np.cumsum(extra / extra.sum())
        self.params.update(
            num_boosted=len(self.ids),
            low_ids=low_ids,
            low_fraction=low_fraction,
            boost_min=boost_min,
            boost_max=boost_max,
            boosted_ids=self.ids.tolist(),
            factors=[round(float(f), 6) for f in self.factors],
        )

    def probabilities(self) -> np.ndarray:
        """The exact distribution over [0, V) this sampler draws from."""
        m = np.ones(self.vocab_size)
        m[self.ids] = self.factors
        return m / m.sum()

    def sample_with(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = rng.integers(0, self.vocab_size, size=n, dtype=self.dtype)
        boosted = rng.random(n) < self.p_extra
        k = int(boosted.sum())
        picks = np.searchsorted(self.extra_cdf, rng.random(k), side="right")
        out[boosted] = self.ids[np.minimum(picks, len(self.ids) - 1)]
        return out


class GaussianSampler(NoiseSampler):
    independent_chunks = True
    kind = "gaussian"

    def __init__(
        self,
        vocab_size: int,
        rng: np.random.Generator,
        mean: float | None = None,
        std: float | None = None,
        sd: float | None = None,  # alias of std
    ):
        super().__init__(vocab_size, rng)
        std = sd if std is None else std
        paper = vocab_size == GPT2_NOISE_VOCAB
        self.mean = float(mean if mean is not None else (25128 if paper else vocab_size / 2))
        self.std = float(std if std is not None else (500 if paper else vocab_size / 100))
        if not self.std > 0:
            raise UsageError(f"std={self.std} must be positive")
        self.params.update(mean=self.mean, std=self.std, rounding="nearest", clip=[0, vocab_size - 1])

    def sample_with(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = np.rint(rng.normal(self.mean, self.std, size=n))
        return np.clip(x, 0, self.vocab_size - 1).astype(self.dtype)


class HistogramSampler(NoiseSampler):
    independent_chunks = True
    kind = "histogram"

    def __init__(self, vocab_size: int, rng: np.random.Generator, histogram: Any = None):
        super().__init__(vocab_size, rng)
        if histogram is None:
            raise UsageError("kind 'histogram' needs a histogram file; pass --histogram FILE (.npy or .json)")
        weights, origin = load_histogram(histogram)
        nonzero = np.flatnonzero(weights)
        if len(nonzero) and nonzero[-1] >= vocab_size:
            raise NoisyLMError(
                f"histogram {origin} gives weight to token id {int(nonzero[-1])} >= {vocab_size}; "
                "noise ids must be ordinary tokens of the shard set's tokenizer"
            )
        weights = weights[:vocab_size]
        self.cdf = np.cumsum(weights / weights.sum())
        self.params.update(histogram=origin, support=len(nonzero), total_weight=float(weights.sum()))
        if isinstance(histogram, (str, os.PathLike)):
            from noisylm.artifacts import sha256_file

            self.params["histogram_sha256"] = sha256_file(histogram)

    def sample_with(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ids = np.searchsorted(self.cdf, rng.random(n), side="right")
        return np.minimum(ids, len(self.cdf) - 1).astype(self.dtype)


def load_histogram(histogram: Any) -> tuple[np.ndarray, str]:
    """Weights indexed by token id from a .npy/.json path, a sequence or a {id: count} mapping."""
    origin = "(in memory)"
    if isinstance(histogram, (str, os.PathLike)):
        path = Path(histogram)
        origin = str(path)
        if not path.is_file():
            raise NoisyLMError(f"histogram {path} not found; check the path")
        try:
            if path.suffix == ".npy":
                histogram = np.load(path, allow_pickle=False)
            elif path.suffix == ".json":
                histogram = json.loads(path.read_text(encoding="utf-8"))
            else:
                raise NoisyLMError(f"histogram {path} must be a .npy or .json file")
        except (ValueError, OSError) as exc:
            raise NoisyLMError(f"cannot read histogram {path} ({exc}); regenerate it") from None
    try:
        if isinstance(histogram, dict):
            ids = np.array([int(k) for k in histogram], dtype=np.int64)
            if len(ids) and ids.min() < 0:
                raise ValueError("negative token id")
            weights = np.zeros(int(ids.max()) + 1 if len(ids) else 0)
            weights[ids] = [float(v) for v in histogram.values()]
        else:
            weights = np.asarray(histogram, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise NoisyLMError(
            f"histogram {origin} is not a list of counts or an {{id: count}} map ({exc})"
        ) from None
    if weights.ndim != 1 or not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
        raise NoisyLMError(
            f"histogram {origin} must be 1-D, finite, non-negative with a positive sum; fix the counts"
        )
    return weights, origin


class MojibakeSampler(NoiseSampler):
    kind = "mojibake"

    def __init__(
        self,
        vocab_size: int,
        rng: np.random.Generator,
        tokenizer: Any = None,
        text: str = "python-docs",
        variants: list[str] | tuple[str, ...] = DEFAULT_MOJIBAKE,
        min_bytes: int = 64,
        max_bytes: int = 2048,
        max_source_chars: int = 1 << 22,
    ):
        import codecs

        from noisylm.data.corpora import BUNDLED, bundled_corpus, iter_documents
        from noisylm.data.tokenizers import get_tokenizer

        super().__init__(vocab_size, rng)
        if tokenizer is None:
            raise UsageError("kind 'mojibake' needs the tokenizer (tokenizer='gpt2', 'bytes' or a Tokenizer)")
        self.tokenizer = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.variants: list[tuple[str, str]] = []
        for v in variants:
            source, _, codec = str(v).partition("->")
            if source not in ("utf8", "gzip", "random") or not codec:
                raise UsageError(
                    f"mojibake variant {v!r} must look like 'utf8->cp037' (utf8|gzip|random->CODEC)"
                )
            try:
                codecs.lookup(codec)
            except LookupError:
                raise UsageError(f"mojibake variant {v!r}: unknown codec {codec!r}") from None
            self.variants.append((source, codec))
        if not 1 <= min_bytes <= max_bytes:
            raise UsageError(f"need 1 <= min_bytes ({min_bytes}) <= max_bytes ({max_bytes})")
        path = bundled_corpus(text) if text in BUNDLED else Path(text)
        parts, size = [], 0
        for doc in iter_documents([path]):
            parts.append(doc)
            size += len(doc)
            if size >= max_source_chars:
                break
        self.text = "".join(parts)[:max_source_chars]
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self._buffer = np.zeros(0, dtype=self.dtype)
        self.params.update(
            text=text,
            variants=[f"{s}->{c}" for s, c in self.variants],
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            source_chars=len(self.text),
            tokenizer=self.tokenizer.name,
        )

    def fragment(self) -> str:
        """One garbled fragment: a byte string made one way, decoded another."""
        rng = self.rng
        length = int(math.exp(rng.uniform(math.log(self.min_bytes), math.log(self.max_bytes + 1))))
        source, codec = self.variants[int(rng.integers(len(self.variants)))]
        if source == "random":
            data = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
        else:
            start = int(rng.integers(0, max(1, len(self.text) - length)))
            data = self.text[start : start + length].encode("utf-8")
            if source == "gzip":
                data = gzip.compress(data, mtime=0)
        return data.decode(codec, errors="replace")

    def sample(self, n: int) -> np.ndarray:
        chunks = [self._buffer]
        have = len(self._buffer)
        while have < n:
            # 64 fragments per call to the tokenizer: one long text tokenizes much faster than many short ones
            text = "".join(self.fragment() for _ in range(64))
            ids = np.asarray(self.tokenizer.encode(text), dtype=self.dtype)
            chunks.append(ids)
            have += len(ids)
        stream = np.concatenate(chunks)
        self._buffer = stream[n:]
        return stream[:n]


class CorpusSampler(NoiseSampler):
    kind = "corpus"

    def __init__(self, vocab_size: int, rng: np.random.Generator, tokenizer: Any = None, source: Any = None):
        from noisylm.artifacts import sha256_file
        from noisylm.data.shards import MANIFEST, ShardSet

        super().__init__(vocab_size, rng)
        if source is None:
            raise UsageError("kind 'corpus' needs a prepared shard set; pass --source DIR")
        shards = ShardSet.open(source)
        tokenizer = getattr(tokenizer, "name", tokenizer)  # a Tokenizer or its name
        if tokenizer is not None and shards.tokenizer != tokenizer:
            raise UsageError(
                f"--source {source} uses tokenizer {shards.tokenizer!r}, the shard set {tokenizer!r}; "
                "prepare the source with the same tokenizer"
            )
        self.tokens = shards.tokens("train")
        if len(self.tokens) == 0:
            raise NoisyLMError(f"--source {source} has no training tokens; prepare a non-empty corpus")
        self.dtype = shards.dtype
        # start at a seeded random document start: the position after the first end-of-text at or after x
        x = int(rng.integers(0, len(self.tokens)))
        self.start = 0
        for lo in range(x, len(self.tokens), 1 << 20):
            hits = np.flatnonzero(self.tokens[lo : lo + (1 << 20)] == shards.eot_id)
            if len(hits):
                self.start = (lo + int(hits[0]) + 1) % len(self.tokens)
                break
        self.pos = self.start
        self.drawn = 0
        self.params = {
            "source": str(source),
            "source_manifest_sha256": sha256_file(shards.path / MANIFEST),
            "source_split": "train",
            "source_tokens": len(self.tokens),
            "start": self.start,
        }

    @property
    def passes(self) -> float:
        return self.drawn / len(self.tokens)

    def sample(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=self.dtype)
        done = 0
        while done < n:
            take = min(n - done, len(self.tokens) - self.pos)
            out[done : done + take] = self.tokens[self.pos : self.pos + take]
            done += take
            self.pos = (self.pos + take) % len(self.tokens)
        self.drawn += n
        return out


SAMPLERS: dict[str, type[NoiseSampler]] = {
    cls.kind: cls
    for cls in (
        UniformSampler,
        BoostedSampler,
        GaussianSampler,
        MojibakeSampler,
        HistogramSampler,
        CorpusSampler,
    )
}


def make_sampler(kind: str, vocab_size: int, rng: np.random.Generator, **params: Any) -> NoiseSampler:
    """A noise stream of ``kind`` over [0, vocab_size); ``params`` as in the module docstring.

    ``tokenizer`` (a `Tokenizer` or a name) is used by ``mojibake`` and checked by ``corpus``; other
    kinds ignore it.
    """
    if kind not in SAMPLERS:
        raise UsageError(f"unknown noise kind {kind!r}; choose one of: {', '.join(NOISE_KINDS)}")
    if vocab_size < 1:
        raise UsageError(f"vocab_size {vocab_size} must be positive")
    cls = SAMPLERS[kind]
    if kind not in ("mojibake", "corpus"):
        params.pop("tokenizer", None)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "vocab_size", "rng"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise UsageError(
            f"unknown parameter(s) {', '.join(unknown)} for noise kind {kind!r}; "
            f"it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(vocab_size, rng, **params)


def generate_noise(kind: str, n: int, vocab_size: int, rng: np.random.Generator, **params: Any) -> np.ndarray:
    """``n`` noise ids of ``kind`` in [0, vocab_size), drawn from ``rng``."""
    return make_sampler(kind, vocab_size, rng, **params).sample(n)
