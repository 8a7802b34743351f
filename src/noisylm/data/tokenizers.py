"""Offline tokenizers: where every token id in noisylm comes from.

- ``gpt2``: GPT-2 BPE (50257 tokens, end-of-text 50256) built with tiktoken from the vocabulary files
  shipped in ``noisylm/assets/gpt2`` (no network, no cache directory). Ids equal tiktoken's ``gpt2``.
- ``bytes``: UTF-8 bytes (ids 0..255) plus an end-of-text token (256): a 257-token vocabulary that
  lets CPU-sized experiments train in minutes.
- ``bpe:N``: a byte-level BPE of N ordinary ids (plus end-of-text = N) trained on the corpus itself with
  Hugging Face ``tokenizers`` (`train_bpe`). Unlike bytes, a small corpus then uses almost its whole
  vocabulary, as GPT-2 does on web text, which is what the paper's noise arguments assume. It lives as a
  ``tokenizer.json`` file inside the shard set (and every run directory trained on it).

All expose the same small interface (`Tokenizer`). Shards record the tokenizer's name; a trained one
also its file and that file's sha256 (`load_tokenizer`).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from noisylm.errors import NoisyLMError, UsageError

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

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """The ids of each text followed by the end-of-text id, concatenated (nanoGPT's layout), as
        `token_dtype`. Each text is encoded on its own: tokens never span two texts."""
        dtype = token_dtype(self.vocab_size)
        eot = np.array([self.eot_id], dtype=dtype)
        parts = [part for text in texts for part in (self.encode_to_array(text).astype(dtype), eot)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

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

    def encode_to_array(self, text: str) -> np.ndarray:
        return self._tiktoken_array(text, frozenset()).astype(np.uint16)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """As `Tokenizer.encode_documents`, in one call into tiktoken: nothing is paid per text (no
        Python call, no array), which matters for many short documents.

        The texts are joined with the end-of-text string and encoded with that string allowed as the
        special token: tiktoken encodes the stretches between special tokens independently (its regex
        runs on each stretch alone), so the ids equal encoding each text alone plus end-of-text. The
        string cannot straddle a text boundary (no proper prefix of it is also a suffix), so only a
        text that contains it (to be encoded as plain text) breaks the join: such a text is encoded on
        its own, the texts around it still together."""
        if not texts:
            return np.zeros(0, dtype=np.uint16)
        joined = GPT2_EOT.join(texts) + GPT2_EOT
        if joined.count(GPT2_EOT) == len(texts):
            return self._tiktoken_array(joined, frozenset((GPT2_EOT,))).astype(np.uint16)
        eot = np.array([self.eot_id], dtype=np.uint16)
        parts, run = [], []
        for text in texts:
            if GPT2_EOT in text:
                parts += [self.encode_documents(run), self.encode_to_array(text), eot]
                run = []
            else:
                run.append(text)
        return np.concatenate([*parts, self.encode_documents(run)])

    def _tiktoken_array(self, text: str, allowed_special: frozenset[str]) -> np.ndarray:
        try:
            return self._enc.encode_to_numpy(text, allowed_special=allowed_special, disallowed_special=())
        except UnicodeEncodeError:
            # a lone surrogate (JSON text may hold one): the same repair as tiktoken's encode_ordinary
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self._enc.encode_to_numpy(text, allowed_special=allowed_special, disallowed_special=())

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
    # str.translate to code points < 256, then latin-1: the mapping at C speed (this runs at the start
    # of every `prepare`); a character outside the map becomes U+FFFF, which latin-1 refuses
    to_latin1 = {ord(c): b for c, b in char_to_byte.items()}
    to_latin1.update({b: 0xFFFF for b in range(256) if chr(b) not in char_to_byte})

    def to_bytes(token: str) -> bytes:
        try:
            return token.translate(to_latin1).encode("latin-1")
        except UnicodeEncodeError:
            raise RuntimeError(f"bundled GPT-2 vocabulary holds {token!r}; reinstall noisylm") from None

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


BPE_FILE = "tokenizer.json"  # a trained BPE's file name inside a shard set or a run directory
BPE_MIN_IDS = 256  # the byte alphabet: every byte must stay encodable


class BPETokenizer(Tokenizer):
    """A byte-level BPE trained on the corpus (`train_bpe`): ids 0..N-1 ordinary, N = end-of-text.

    End-of-text is kept outside the Hugging Face tokenizer's vocabulary while encoding, so that the text
    ``<|endoftext|>`` inside a document is plain text, as it is for the other tokenizers."""

    def __init__(self, hf_tokenizer, *, json_text: str | None = None) -> None:
        self._tok = hf_tokenizer
        self.n_ordinary = hf_tokenizer.get_vocab_size(with_added_tokens=False)
        self.name = f"bpe:{self.n_ordinary}"
        self.vocab_size = self.n_ordinary + 1
        self.eot_id = self.n_ordinary
        self.json_text = json_text if json_text is not None else hf_tokenizer.to_str()

    @classmethod
    def from_json(cls, json_text: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(json_text), json_text=json_text)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        try:
            text = Path(path).read_text(encoding="utf-8")
            return cls.from_json(text)
        except FileNotFoundError:
            raise UsageError(f"tokenizer file {path} is missing; prepare the shards again") from None
        except Exception as exc:  # tokenizers raises plain Exception on a malformed file
            raise UsageError(f"tokenizer file {path} is not a valid tokenizer.json ({exc})") from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json_text.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        from noisylm.artifacts import atomic_path

        with atomic_path(Path(path)) as tmp:
            Path(tmp).write_text(self.json_text, encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) < self.n_ordinary], skip_special_tokens=False)

    def to_transformers(self):
        """A `transformers.PreTrainedTokenizerFast` with the same ids and ``<|endoftext|>`` = eot_id."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer
        from transformers import PreTrainedTokenizerFast

        hf = HFTokenizer.from_str(self.json_text)
        hf.add_special_tokens([AddedToken(GPT2_EOT, special=True, normalized=False)])
        if hf.token_to_id(GPT2_EOT) != self.eot_id:
            raise NoisyLMError(f"end-of-text would get id {hf.token_to_id(GPT2_EOT)}, not {self.eot_id}")
        return PreTrainedTokenizerFast(
            tokenizer_object=hf, bos_token=GPT2_EOT, eos_token=GPT2_EOT, unk_token=GPT2_EOT
        )


def parse_bpe_name(name: str) -> int | None:
    """N for ``bpe:N``, None for any other tokenizer name; a malformed ``bpe:`` name is an error."""
    if not name.startswith("bpe:"):
        return None
    size = name[4:]
    if not size.isdigit() or int(size) < BPE_MIN_IDS or int(size) >= 1 << 16:
        raise UsageError(
            f"tokenizer {name!r}: use bpe:N with N ordinary ids, {BPE_MIN_IDS} <= N < 65536 (e.g. bpe:2048)"
        )
    return int(size)


def train_bpe(documents: Iterable[str], n_ids: int) -> BPETokenizer:
    """Train a byte-level BPE of ``n_ids`` ordinary ids on ``documents`` with Hugging Face `tokenizers`.

    GPT-2's pre-tokenisation (byte-level with its regex, no prefix space) and the full byte alphabet, so
    any text stays encodable. Deterministic for the same documents and ``n_ids``: training runs on one
    thread (`tokenizers` merges ties in thread order otherwise) and documents are fed in order.
    """
    parse_bpe_name(f"bpe:{n_ids}")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_ids,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    with _single_threaded_tokenizers():
        tok.train_from_iterator(documents, trainer=trainer)
    got = tok.get_vocab_size(with_added_tokens=False)
    if got != n_ids:
        raise UsageError(
            f"the corpus supports only {got} BPE ids, fewer than the {n_ids} asked for; use bpe:{got} or "
            "more text"
        )
    return BPETokenizer(tok)


@contextlib.contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    previous = os.environ.get("RAYON_NUM_THREADS")
    os.environ["RAYON_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAYON_NUM_THREADS", None)
        else:
            os.environ["RAYON_NUM_THREADS"] = previous


def load_tokenizer(name: str, directory: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer a shard set or run directory records: ``gpt2``/``bytes`` by name, a trained
    ``bpe:N`` from ``directory/tokenizer.json`` (checked against the name)."""
    if parse_bpe_name(name) is None:
        return get_tokenizer(name)
    if directory is None:
        raise UsageError(f"tokenizer {name!r} is trained per corpus; it needs the shard set's {BPE_FILE}")
    tok = BPETokenizer.from_file(Path(directory) / BPE_FILE)
    if tok.name != name:
        raise NoisyLMError(f"{Path(directory) / BPE_FILE} holds {tok.name}, but {name} was recorded")
    return tok


TOKENIZERS: dict[str, type[Tokenizer]] = {"gpt2": GPT2Tokenizer, "bytes": ByteTokenizer}


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name`` ("gpt2" or "bytes"); built once per process. A trained ``bpe:N``
    lives in a file: use `load_tokenizer`."""
    if name.startswith("bpe:"):
        raise UsageError(f"tokenizer {name!r} is trained per corpus; load it with its shard set")
    try:
        cls = TOKENIZERS[name]
    except KeyError:
        raise UsageError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}") from None
    return cls()
