"""Offline tokenizers: where every token id in noisylm comes from.

- ``gpt2``: GPT-2 BPE (50257 tokens, end-of-text 50256) built with tiktoken from the vocabulary files
  shipped in ``noisylm/assets/gpt2`` (no network, no cache directory). Ids equal tiktoken's ``gpt2``.
- ``bytes``: UTF-8 bytes (ids 0..255) plus an end-of-text token (256): a 257-token vocabulary that
  lets CPU-sized experiments train in minutes.

Both expose the same small interface (`Tokenizer`), so shards record only the tokenizer's name.
"""

from __future__ import annotations

import functools
import gzip
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib import resources

import numpy as np

from noisylm.errors import UsageError

try:  # GPT-2's pre-tokenisation regex, exactly as tiktoken's `gpt2` encoding uses it
    from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN
except ImportError:  # older tiktoken: the original GPT-2 release pattern (equivalent, slower)
    GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = "<|endoftext|>"


class Tokenizer(ABC):
    """Text ↔ token ids. Subclasses set ``name``, ``vocab_size`` and ``eot_id``."""

    name: str
    vocab_size: int
    eot_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens are treated as plain text)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (invalid UTF-8 is replaced, never raised)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_to_array(self, text: str) -> np.ndarray:
        """Ids as the smallest unsigned dtype that holds the vocabulary (see `token_dtype`)."""
        return np.asarray(self.encode(text), dtype=token_dtype(self.vocab_size))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"
        )


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 (nanoGPT's format) when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens 0..255, end-of-text = 256."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_to_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE through tiktoken, from the bundled vocabulary."""

    name = "gpt2"
    vocab_size = 50257
    eot_id = 50256

    def __init__(self) -> None:
        import tiktoken

        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=_gpt2_mergeable_ranks(),
            special_tokens={GPT2_EOT: self.eot_id},
            explicit_n_vocab=self.vocab_size,
        )

    @property
    def encoding(self):  # tiktoken.Encoding, for callers that want its batch/threaded API
        return self._enc

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids], errors="replace")


@functools.lru_cache(maxsize=1)
def _gpt2_mergeable_ranks() -> dict[bytes, int]:
    """BPE ranks from encoder.json + vocab.bpe, as tiktoken's `data_gym_to_mergeable_bpe_ranks`
    builds them, but read from the package (tiktoken's loader would write to a cache directory)."""
    # GPT-2 maps the 256 bytes to printable characters; undo that mapping.
    rank_to_byte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in rank_to_byte}
    extra = 0
    for b in range(256):
        if b not in rank_to_byte:
            rank_to_byte.append(b)
            char_to_byte[chr(256 + extra)] = b
            extra += 1

    def to_bytes(token: str) -> bytes:
        return bytes(char_to_byte[c] for c in token)

    assets = resources.files("noisylm") / "assets" / "gpt2"
    merges_text = gzip.decompress((assets / "vocab.bpe.gz").read_bytes()).decode("utf-8")
    ranks = {bytes([b]): i for i, b in enumerate(rank_to_byte)}
    for line in merges_text.split("\n")[1:-1]:
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)

    encoder = json.loads(gzip.decompress((assets / "encoder.json.gz").read_bytes()))
    encoder.pop(GPT2_EOT, None)
    if len(encoder) != len(ranks) or any(ranks.get(to_bytes(k)) != v for k, v in encoder.items()):
        raise RuntimeError("bundled GPT-2 encoder.json and vocab.bpe disagree; reinstall noisylm")
    return ranks


TOKENIZERS: dict[str, type[Tokenizer]] = {"gpt2": GPT2Tokenizer, "bytes": ByteTokenizer}


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name`` ("gpt2" or "bytes"); built once per process."""
    try:
        cls = TOKENIZERS[name]
    except KeyError:
        raise UsageError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}") from None
    return cls()
