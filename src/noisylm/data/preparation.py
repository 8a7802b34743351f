"""Text → token shards (`noisylm prepare`), and `merge` for shard sets prepared in parts.

The main process reads the inputs as a stream of bounded pieces (`corpora.iter_pieces`), assigns
each document to a split, and hands batches of about 1 M characters to ``num_proc`` worker processes
that tokenize them (the whole documents of a batch in one tokenizer call where the tokenizer allows:
`Tokenizer.encode_documents`); it writes the ids in input order, each document followed by the
end-of-text id (nanoGPT's format), hashing them as it writes. At most ``2 * num_proc + 2`` batches are
in flight, so memory stays bounded (tens of MB) whatever the corpus size. (Threads instead of processes
were measured for GPT-2, whose tiktoken releases the GIL: on the 2-core machine two threads used ~40%
more CPU than two processes for the same ids, so processes stay.)

Validation split: documents, chosen by systematic sampling with a seeded offset: document ``i``
(counted over the whole input, in order) is a validation document when
``floor((i + 1) * f + u) > floor(i * f + u)``, ``f`` the validation fraction and ``u`` in [0, 1)
drawn from the seed. Exactly ``floor`` or ``ceil`` of ``f`` × documents go to validation, spread
evenly, without knowing the document count in advance.

Sharding: with ``num_shards = N``, shard ``k`` keeps the documents ``i`` with ``i % N == k`` (same
split assignment as an unsharded run); `merge` concatenates shard sets in the order given.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_dir, pause_for_tests, provenance, sha256_file
from noisylm.data.corpora import bundled_corpus, iter_pieces, resolve_inputs
from noisylm.data.shards import MANIFEST, SHARD_FORMAT, ShardSet, write_manifest
from noisylm.data.tokenizers import (
    BPE_FILE,
    TOKENIZERS,
    BPETokenizer,
    Tokenizer,
    get_tokenizer,
    parse_bpe_name,
    token_dtype,
    train_bpe,
)
from noisylm.errors import NoisyLMError, UsageError
from noisylm.workers import exit_with_parent

BATCH_CHARS = 1 << 20


@dataclass
class PrepareConfig:
    """How `prepare` turns text into shards.

    tokenizer:      "gpt2" (GPT-2 BPE, 50257 ids), "bytes" (257 ids, for CPU-sized runs) or "bpe:N"
                    (a byte-level BPE of N ordinary ids trained on this corpus's training documents)
    tokenizer_from: a shard set whose trained tokenizer to reuse (so that a second corpus shares its
                    ids); its name replaces ``tokenizer``
    val_fraction:   share of documents in the validation split, in [0, 1)
    seed:           seeds the validation assignment (see module docstring)
    num_proc:       tokenizer processes (1 = tokenize in this process)
    doc_separator:  split text files into documents at this literal string (None: one per file)
    text_field:     the field of JSONL records that holds the text
    max_documents:  stop after this many documents (over the whole input; None: all)
    num_shards:     split the documents round-robin into this many independent shard sets ...
    shard_index:    ... and write this one (0-based)
    """

    tokenizer: str = "gpt2"
    tokenizer_from: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    num_proc: int = 1
    doc_separator: str | None = None
    text_field: str = "text"
    max_documents: int | None = None
    num_shards: int = 1
    shard_index: int = 0

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS and parse_bpe_name(self.tokenizer) is None:
            raise UsageError(
                f"unknown tokenizer {self.tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}, bpe:N"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction {self.val_fraction} is outside [0, 1); use e.g. 0.1")
        if self.num_proc < 1:
            raise UsageError(f"--num-proc {self.num_proc} must be at least 1")
        if self.doc_separator == "":
            raise UsageError("--doc-separator is empty; give a string such as '\\n\\n' or omit it")
        if self.max_documents is not None and self.max_documents < 1:
            raise UsageError(f"--max-documents {self.max_documents} must be at least 1")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise UsageError(
                f"--shard-index {self.shard_index} must be in [0, --num-shards={self.num_shards})"
            )


def prepare(
    inputs: Sequence[str | os.PathLike] | None,
    out: str | os.PathLike,
    *,
    corpus: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **config: Any,
) -> ShardSet:
    """Tokenize ``inputs`` (files/folders) or the bundled ``corpus`` into a shard set at ``out``.

    ``config`` holds the fields of `PrepareConfig`. Returns the opened shard set.

    >>> prepare(None, "data/shakespeare", corpus="shakespeare", tokenizer="bytes")
    """
    cfg = PrepareConfig(**config)
    if corpus is not None and inputs:
        raise UsageError("give either input paths or --corpus, not both")
    paths = [bundled_corpus(corpus)] if corpus is not None else list(inputs or [])
    files = resolve_inputs(paths)
    tokenizer = _tokenizer_for(files, cfg)
    dtype = token_dtype(tokenizer.vocab_size)
    record_config = {**asdict(cfg), "inputs": [str(p) for p in paths], "corpus": corpus}

    with atomic_dir(out, overwrite=overwrite) as tmp:
        trained = isinstance(tokenizer, BPETokenizer)
        if trained:
            tokenizer.save(tmp / BPE_FILE)
        writers = {s: _SplitWriter(tmp / f"{s}.bin", dtype) for s in ("train", "val")}
        source_docs = [0] * len(files)
        try:
            _tokenize_into(files, cfg, _spec(tokenizer), writers, source_docs, progress)
        finally:
            for w in writers.values():
                w.close()
        total_docs = writers["train"].documents + writers["val"].documents
        if total_docs == 0:
            raise NoisyLMError(
                f"no documents in {', '.join(map(str, paths))}"
                + (f" for shard {cfg.shard_index} of {cfg.num_shards}" if cfg.num_shards > 1 else "")
                + "; the input is empty or whitespace only"
            )
        if cfg.val_fraction > 0 and writers["val"].documents == 0 and cfg.num_shards == 1:
            # (one shard of many may hold no validation document; `merge` combines them)
            raise NoisyLMError(
                f"--val-fraction {cfg.val_fraction} of {total_docs} document(s) selects none for "
                "validation; give more documents (e.g. --doc-separator '\\n\\n\\n') or a larger fraction"
            )
        sources = [
            {"path": str(f), "sha256": sha256_file(f), "documents": n, "bytes": f.stat().st_size}
            for f, n in zip(files, source_docs, strict=True)
        ]
        manifest = {
            "format": SHARD_FORMAT,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": dtype.name,
            **({"tokenizer_file": BPE_FILE, "tokenizer_sha256": tokenizer.sha256} if trained else {}),
            "splits": {name: w.record() for name, w in writers.items()},
            "sources": sources,
            "val_fraction": cfg.val_fraction,
            "seed": cfg.seed,
            "shard": {"index": cfg.shard_index, "num_shards": cfg.num_shards},
            "noise": None,
            "provenance": provenance(record_config, cfg.seed),
        }
        write_manifest(tmp / MANIFEST, manifest)
    return ShardSet.open(out)


class _SplitWriter:
    """Appends token arrays to one split file, counting and hashing as it goes."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.hash = hashlib.sha256()
        self.tokens = 0
        self.documents = 0

    def write(self, ids: np.ndarray, documents: int) -> None:
        data = ids.astype(self.dtype, copy=False).tobytes()
        self.fh.write(data)
        self.hash.update(data)
        self.tokens += len(ids)
        self.documents += documents

    def close(self) -> None:
        self.fh.close()

    def record(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "tokens": self.tokens,
            "documents": self.documents,
            "sha256": self.hash.hexdigest(),
        }


def _is_val(index: int, fraction: float, offset: float) -> bool:
    return math.floor((index + 1) * fraction + offset) > math.floor(index * fraction + offset)


def _batches(files: list[Path], cfg: PrepareConfig, source_docs: list[int]):
    """Yield lists of (text, ends_document, is_val) of about BATCH_CHARS characters."""
    offset = float(np.random.default_rng(cfg.seed).random())
    doc_index = 0  # index of the current document over the whole input
    batch: list[tuple[str, bool, bool]] = []
    size = 0
    for piece in iter_pieces(files, doc_separator=cfg.doc_separator, text_field=cfg.text_field):
        if cfg.max_documents is not None and doc_index >= cfg.max_documents:
            break
        if doc_index % cfg.num_shards == cfg.shard_index:
            batch.append((piece.text, piece.ends_document, _is_val(doc_index, cfg.val_fraction, offset)))
            size += len(piece.text)
            if piece.ends_document:
                source_docs[piece.source] += 1
        if piece.ends_document:
            doc_index += 1
        if size >= BATCH_CHARS:
            yield batch, size
            batch, size = [], 0
    if batch:
        yield batch, size


def _tokenizer_for(files: list[Path], cfg: PrepareConfig) -> Tokenizer:
    """The named tokenizer, the one of ``tokenizer_from``, or a ``bpe:N`` trained here on the training
    documents (the same split assignment as the shards, so validation text never shapes the ids)."""
    if cfg.tokenizer_from is not None:
        source = ShardSet.open(cfg.tokenizer_from)
        tokenizer = source.load_tokenizer()
        cfg.tokenizer = tokenizer.name
        return tokenizer
    size = parse_bpe_name(cfg.tokenizer)
    if size is None:
        return get_tokenizer(cfg.tokenizer)

    def training_documents() -> Iterator[str]:
        parts: list[str] = []
        for batch, _ in _batches(files, cfg, [0] * len(files)):
            for text, ends, is_val in batch:
                if not is_val:
                    parts.append(text)
                if ends:
                    if parts:
                        yield "".join(parts)
                    parts = []
        if parts:
            yield "".join(parts)

    return train_bpe(training_documents(), size)


def _spec(tokenizer: Tokenizer) -> str:
    """What a worker needs to rebuild ``tokenizer``: its name, or a trained BPE's JSON."""
    return tokenizer.json_text if isinstance(tokenizer, BPETokenizer) else tokenizer.name


@functools.lru_cache(maxsize=2)
def _worker_tokenizer(spec: str) -> Tokenizer:
    return BPETokenizer.from_json(spec) if spec.startswith("{") else get_tokenizer(spec)


def _encode_batch(spec: str, batch: list[tuple[str, bool, bool]]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Worker: ids of a batch, split into (train ids, val ids, train docs, val docs)."""
    tok = _worker_tokenizer(spec)
    train = [(text, ends) for text, ends, is_val in batch if not is_val]
    val = [(text, ends) for text, ends, is_val in batch if is_val]
    return (
        _encode_pieces(tok, train),
        _encode_pieces(tok, val),
        sum(ends for _, ends in train),
        sum(ends for _, ends in val),
    )


def _encode_pieces(tok: Tokenizer, pieces: list[tuple[str, bool]]) -> np.ndarray:
    """The ids of ``pieces`` in order, end-of-text after each piece that ends a document. Whole
    documents go to the tokenizer together (`Tokenizer.encode_documents`: one call per run of them);
    a piece of a long document is encoded on its own, as `corpora.iter_pieces` promises."""
    dtype = token_dtype(tok.vocab_size)
    parts: list[np.ndarray] = []
    documents: list[str] = []
    for text, ends in pieces:
        if ends:
            documents.append(text)
            continue
        if documents:
            parts.append(tok.encode_documents(documents))
            documents = []
        parts.append(tok.encode_to_array(text))
    if documents:
        parts.append(tok.encode_documents(documents))
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _mp_context():
    # fork shares the already-built tokenizer and starts fast; elsewhere spawn is the safe default
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")


_WORKER_SPEC: str | None = None  # set once per worker process by `_start_worker`


def _start_worker(parent_pid: int, spec: str) -> None:
    """Tokenizer worker initializer: receive the tokenizer once (a trained BPE's JSON is ~100 KB, too
    much to send with every batch) and die with `prepare`."""
    global _WORKER_SPEC
    _WORKER_SPEC = spec
    exit_with_parent(parent_pid)


def _encode_in_worker(batch: list[tuple[str, bool, bool]]) -> tuple[np.ndarray, np.ndarray, int, int]:
    assert _WORKER_SPEC is not None, "tokenizer worker started without _start_worker"
    return _encode_batch(_WORKER_SPEC, batch)


def _tokenize_into(
    files: list[Path],
    cfg: PrepareConfig,
    spec: str,
    writers: dict[str, _SplitWriter],
    source_docs: list[int],
    progress: bool | None,
) -> None:
    bar = _progress_bar(files, progress)

    def write(result: tuple[np.ndarray, np.ndarray, int, int], chars: int) -> None:
        train, val, n_train, n_val = result
        writers["train"].write(train, n_train)
        writers["val"].write(val, n_val)
        bar.update(chars)
        pause_for_tests("prepare.write")

    batches = _batches(files, cfg, source_docs)
    try:
        if cfg.num_proc == 1:
            for batch, chars in batches:
                write(_encode_batch(spec, batch), chars)
            return
        _worker_tokenizer(spec)  # build once here; forked workers inherit it
        in_flight: collections.deque[tuple[Future, int]] = collections.deque()
        with ProcessPoolExecutor(
            max_workers=cfg.num_proc,
            mp_context=_mp_context(),
            initializer=_start_worker,
            initargs=(os.getpid(), spec),
        ) as pool:
            for batch, chars in batches:
                in_flight.append((pool.submit(_encode_in_worker, batch), chars))
                if len(in_flight) >= 2 * cfg.num_proc + 2:
                    future, n = in_flight.popleft()
                    write(future.result(), n)
            while in_flight:
                future, n = in_flight.popleft()
                write(future.result(), n)
    finally:
        bar.close()


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(files: list[Path], progress: bool | None) -> Any:
    if progress is False:  # --quiet: skip even importing tqdm (~50 ms of every run's start-up)
        return _NoProgress()
    from tqdm import tqdm

    total = sum(f.stat().st_size for f in files) if not any(f.suffix == ".gz" for f in files) else None
    # progress None: tqdm decides (a bar only on a terminal)
    return tqdm(
        total=total, unit="B", unit_scale=True, desc="prepare", disable=None if progress is None else False
    )


def merge(
    inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> ShardSet:
    """Concatenate clean shard sets made with the same tokenizer (e.g. the shards of one corpus)."""
    if len(inputs) < 1:
        raise UsageError("merge needs at least one shard set")
    sets = [ShardSet.open(p) for p in inputs]
    first = sets[0]
    for s in sets[1:]:
        same_bpe = s.manifest.get("tokenizer_sha256") == first.manifest.get("tokenizer_sha256")
        if (s.tokenizer, s.vocab_size, s.dtype) != (
            first.tokenizer,
            first.vocab_size,
            first.dtype,
        ) or not same_bpe:
            raise NoisyLMError(
                f"{s.path} uses tokenizer {s.tokenizer!r} but {first.path} uses {first.tokenizer!r}; "
                "merge only shard sets prepared with the same tokenizer"
            )
    for s in sets:
        if s.noise is not None:
            raise NoisyLMError(f"{s.path} holds injected noise; merge clean sets, then run `noisylm inject`")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        first.copy_tokenizer_to(tmp)
        splits = {}
        for split in ("train", "val"):
            writer = _SplitWriter(tmp / f"{split}.bin", first.dtype)
            try:
                for s in sets:
                    if s.has(split):
                        tokens = s.tokens(split)
                        for start in range(0, len(tokens), 1 << 24):
                            writer.write(np.asarray(tokens[start : start + (1 << 24)]), 0)
                        writer.documents += s.splits[split].documents or 0
            finally:
                writer.close()
            splits[split] = writer.record()
        manifest = {
            "format": SHARD_FORMAT,
            "tokenizer": first.tokenizer,
            "vocab_size": first.vocab_size,
            "eot_id": first.eot_id,
            "dtype": first.dtype.name,
            **first.tokenizer_record(),
            "splits": splits,
            "sources": [src for s in sets for src in s.manifest.get("sources", [])],
            "val_fraction": first.manifest.get("val_fraction"),
            "seed": first.manifest.get("seed"),
            "merged_from": [
                {"path": str(s.path), "manifest_sha256": sha256_file(s.path / MANIFEST)} for s in sets
            ],
            "noise": None,
            "provenance": provenance({"inputs": [str(p) for p in inputs]}, first.manifest.get("seed")),
        }
        write_manifest(tmp / MANIFEST, manifest)
    return ShardSet.open(out)
