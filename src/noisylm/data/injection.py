"""Shards → noisy shards (`noisylm inject`): the paper's P^m = α P^n + (1 - α) P^c (Eq. 1).

Given a clean shard set with C training tokens, `inject` adds N = round(α C / (1 - α)) noise tokens,
so the achieved α = N / (C + N) is within half a token of the request. The validation split is
copied untouched. Placement:

- ``append`` (the paper, App. D.2): the noise follows the clean training data, one span.
- ``interleave``: the noise is cut into documents whose lengths are drawn i.i.d. from a log-normal
  with median ``doc_median`` tokens [512] and shape ``doc_sigma`` [1.0] (rounded, at least 1; the
  last one is shortened to make the total exact), and each is inserted at a document boundary (the
  start of train.bin or right after an end-of-text id) drawn uniformly with replacement. Noise
  documents carry no end-of-text id of their own, so removing the spans from train.bin gives back
  the clean train.bin byte for byte, and α is exactly noise tokens / all tokens.

Also written: ``noise.bin``, the noise alone (the spans' tokens in order), and the manifest's
``noise`` record: kind, resolved parameters, seed, placement, requested and achieved α, token
counts, the parent shard set and the spans (``ShardSet.noise_spans()``; adjacent spans merged).
The noise stream and the placement draw from two independent children of ``seed``, and noise is
generated in fixed chunks, so the same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import mmap
import os
import queue
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from noisylm.artifacts import atomic_dir, pause_for_tests, provenance, sha256_file
from noisylm.data.noise import NOISE_KINDS, make_sampler
from noisylm.data.shards import MANIFEST, ShardSet, write_manifest
from noisylm.errors import UsageError

PLACEMENTS = ("append", "interleave")
NOISE_CHUNK = 1 << 22  # noise is generated in chunks of this many tokens (part of the seeded recipe)
COPY_BYTES = 1 << 26


@dataclass
class InjectConfig:
    """What noise `inject` adds.

    alpha:      noise tokens / all training tokens after injection, in [0, 1)
    kind:       uniform | boosted | gaussian | mojibake | histogram | corpus (see `noisylm.data.noise`)
    seed:       seeds the noise and its placement
    placement:  append (after the clean data, as in the paper) | interleave (as documents)
    params:     parameters of the noise kind (e.g. {"std": 500}, {"histogram": "h.npy"}, {"source": DIR})
    doc_median: interleave: median noise-document length in tokens
    doc_sigma:  interleave: log-normal shape of the noise-document lengths
    """

    alpha: float
    kind: str = "uniform"
    seed: int = 0
    placement: str = "append"
    params: dict[str, Any] = field(default_factory=dict)
    doc_median: float = 512.0
    doc_sigma: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha < 1.0:
            raise UsageError(f"--alpha {self.alpha} is outside [0, 1); use e.g. 0.05 for 5% noise")
        if self.kind not in NOISE_KINDS:
            raise UsageError(f"unknown noise kind {self.kind!r}; choose one of: {', '.join(NOISE_KINDS)}")
        if self.placement not in PLACEMENTS:
            raise UsageError(f"unknown placement {self.placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        if not self.doc_median >= 1 or not self.doc_sigma >= 0:
            raise UsageError("--doc-median must be >= 1 and --doc-sigma >= 0")


def noise_vocab(shards: ShardSet) -> int:
    """The V of the noise range [0, V): ordinary tokens, without a trailing end-of-text id."""
    return shards.eot_id if shards.eot_id == shards.vocab_size - 1 else shards.vocab_size


def inject(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    alpha: float,
    overwrite: bool = False,
    progress: bool | None = None,
    **config: Any,
) -> ShardSet:
    """Write ``out``: ``src`` with noise at proportion ``alpha`` in its training split.

    ``config`` holds the other fields of `InjectConfig` (kind, seed, placement, params, ...); any
    other keyword is a parameter of the noise kind, e.g. ``inject(..., kind="gaussian", std=500)``.

    >>> inject("data/shakespeare", "data/shakespeare-uniform-0.2", alpha=0.2, kind="uniform", seed=0)
    """
    fields = set(InjectConfig.__dataclass_fields__)
    kind_params = {k: config.pop(k) for k in list(config) if k not in fields}
    if kind_params:
        config["params"] = {**(config.get("params") or {}), **kind_params}
    if config.get("params") is None:
        config.pop("params", None)
    cfg = InjectConfig(alpha=alpha, **config)
    parent = ShardSet.open(src)
    if parent.noise is not None:
        raise UsageError(f"{parent.path} already holds injected noise; inject into the clean shard set")
    clean = parent.splits["train"].tokens
    n_noise = round(cfg.alpha * clean / (1.0 - cfg.alpha))
    noise_seq, place_seq = np.random.SeedSequence(cfg.seed).spawn(2)
    sampler = make_sampler(
        cfg.kind,
        noise_vocab(parent),
        np.random.default_rng(noise_seq),
        tokenizer=parent.load_tokenizer() if cfg.kind == "mojibake" else parent.tokenizer,
        **cfg.params,
    )
    insertions = _placement(parent, cfg, n_noise, np.random.default_rng(place_seq))

    with atomic_dir(out, overwrite=overwrite) as tmp:
        train_hash, noise_hash, spans, noise_eots = _write_train(
            parent, sampler, noise_seq, insertions, tmp / "train.bin", tmp / "noise.bin", progress
        )
        shutil.copyfile(parent.file("val"), tmp / "val.bin")
        parent.copy_tokenizer_to(tmp)
        splits = {
            "train": {
                "file": "train.bin",
                "tokens": clean + n_noise,
                "documents": (parent.splits["train"].documents or 0) + noise_eots,
                "sha256": train_hash,
            },
            "val": {**parent.manifest["splits"]["val"], "file": "val.bin"},
            "noise": {"file": "noise.bin", "tokens": n_noise, "documents": None, "sha256": noise_hash},
        }
        params = dict(sampler.params)
        if cfg.kind == "corpus":
            params["passes"] = round(sampler.passes, 6)
        placement_params = (
            {"doc_median": cfg.doc_median, "doc_sigma": cfg.doc_sigma, "distribution": "lognormal"}
            if cfg.placement == "interleave"
            else {}
        )
        record = {
            "kind": cfg.kind,
            "params": params,
            "seed": cfg.seed,
            "placement": cfg.placement,
            "placement_params": placement_params,
            "alpha_requested": cfg.alpha,
            "alpha_achieved": n_noise / (clean + n_noise) if clean + n_noise else 0.0,
            "clean_tokens": clean,
            "noise_tokens": n_noise,
            "noise_documents": len(insertions),
            "parent": {
                "path": str(parent.path),
                "manifest_sha256": sha256_file(parent.path / MANIFEST),
                "train_sha256": parent.splits["train"].sha256,
            },
            "spans": spans,
        }
        manifest = {
            **{k: v for k, v in parent.manifest.items() if k != "provenance"},
            "splits": splits,
            "noise": record,
            "provenance": provenance(asdict(cfg), cfg.seed),
        }
        write_manifest(tmp / MANIFEST, manifest)
    return ShardSet.open(out)


def _placement(
    parent: ShardSet, cfg: InjectConfig, n_noise: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(clean-token position, noise length) of each noise document, in output order."""
    clean = parent.splits["train"].tokens
    if n_noise == 0:
        return []
    if cfg.placement == "append":
        return [(clean, n_noise)]
    lengths: list[int] = []
    total = 0
    mu = np.log(cfg.doc_median)
    while total < n_noise:
        draw = np.maximum(1, np.rint(rng.lognormal(mu, cfg.doc_sigma, size=4096))).astype(np.int64)
        for length in draw.tolist():
            length = min(length, n_noise - total)
            lengths.append(length)
            total += length
            if total == n_noise:
                break
    boundaries = _document_starts(parent)
    where = np.sort(boundaries[rng.integers(0, len(boundaries), size=len(lengths))], kind="stable")
    return list(zip(where.tolist(), lengths, strict=True))


def _document_starts(parent: ShardSet, chunk: int = 1 << 24) -> np.ndarray:
    """Positions where a document may be inserted: 0 and right after each end-of-text id."""
    tokens = parent.tokens("train")
    starts = [np.zeros(1, dtype=np.int64)]
    for lo in range(0, len(tokens), chunk):
        hits = np.flatnonzero(np.asarray(tokens[lo : lo + chunk]) == parent.eot_id)
        starts.append(hits.astype(np.int64) + lo + 1)
    return np.unique(np.concatenate(starts))


class _NoiseStream:
    """The noise in order, generated in chunks of NOISE_CHUNK tokens (the last one shorter) on worker
    threads ahead of the writer (numpy and tiktoken release the GIL). Chunk sizes depend only on the
    total, and samplers without stream state draw chunk k from the k-th child of the noise seed, so
    the same seed gives the same tokens however many threads run."""

    def __init__(self, sampler: Any, total: int, dtype: np.dtype, seed: np.random.SeedSequence):
        sizes = [min(NOISE_CHUNK, total - lo) for lo in range(0, total, NOISE_CHUNK)]
        self.dtype = dtype
        if sampler.independent_chunks:
            children = seed.spawn(len(sizes))
            self.jobs = iter(
                [
                    (lambda k=k, n=n: sampler.sample_with(np.random.default_rng(children[k]), n))
                    for k, n in enumerate(sizes)
                ]
            )
            workers = 2
        else:  # one stream: one worker, chunks in order
            self.jobs = iter([(lambda n=n: sampler.sample(n)) for n in sizes])
            workers = 1
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.futures: collections.deque[Future] = collections.deque()
        for _ in range(workers + 1):
            self._submit()
        self.pending = np.zeros(0, dtype=dtype)

    def _submit(self) -> None:
        job = next(self.jobs, None)
        if job is not None:
            self.futures.append(self.pool.submit(job))

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if len(self.pending) == 0:
                self.pending = self.futures.popleft().result().astype(self.dtype, copy=False)
                self._submit()
            part, self.pending = self.pending[:n], self.pending[n:]
            parts.append(part)
            n -= len(part)
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _HashingWriter:
    """Appends to a file and hashes what it wrote on a background thread (hashlib releases the GIL),
    so hashing overlaps writing. Clean stretches are copied by the kernel (``os.copy_file_range``,
    as ``shutil.copyfile`` does) and hashed from a memory map of the source, without a user-space copy."""

    def __init__(self, path: Path):
        self.fh: BinaryIO = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in finish()
        self.hash = hashlib.sha256()
        self.queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            self.hash.update(data)
            del data  # release memoryviews of the source map promptly

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.fh.write(view) :]
        self.queue.put(data)

    def copy_from(self, src_fd: int, src_map: mmap.mmap, offset: int, nbytes: int) -> None:
        """Append ``nbytes`` of the source file starting at byte ``offset``."""
        end = offset + nbytes
        while offset < end:
            size = min(COPY_BYTES, end - offset)
            done = 0
            if hasattr(os, "copy_file_range"):
                try:
                    while done < size:
                        n = os.copy_file_range(src_fd, self.fh.fileno(), size - done, offset + done)
                        if n == 0:
                            break
                        done += n
                except OSError:  # e.g. across file systems on old kernels: fall back to read + write
                    pass
            if done < size:
                view = memoryview(src_map)[offset + done : offset + size]
                while view:
                    view = view[self.fh.write(view) :]
            self.queue.put(memoryview(src_map)[offset : offset + size])
            offset += size

    def finish(self) -> str:
        self.queue.put(None)
        self.thread.join()
        self.fh.close()
        return self.hash.hexdigest()


def _write_train(
    parent: ShardSet,
    sampler: Any,
    noise_seed: np.random.SeedSequence,
    insertions: list[tuple[int, int]],
    train_path: Path,
    noise_path: Path,
    progress: bool | None,
) -> tuple[str, str, list[list[int]], int]:
    from tqdm import tqdm

    itemsize = parent.dtype.itemsize
    clean = parent.splits["train"].tokens
    n_noise = sum(n for _, n in insertions)
    train_out, noise_out = _HashingWriter(train_path), _HashingWriter(noise_path)
    spans: list[list[int]] = []
    noise_eots = 0
    bar = tqdm(
        total=(clean + n_noise) * itemsize,
        unit="B",
        unit_scale=True,
        desc="inject",
        disable=(not progress) if progress is not None else None,
    )

    stream = _NoiseStream(sampler, n_noise, parent.dtype, noise_seed)
    take_noise = stream.take

    src_map = None
    try:
        with open(parent.file("train"), "rb") as src:
            src_map = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) if clean else None
            copied = 0  # clean tokens written so far
            out_pos = 0

            def copy_clean(upto: int) -> None:
                nonlocal copied, out_pos
                if upto > copied:
                    nbytes = (upto - copied) * itemsize
                    train_out.copy_from(src.fileno(), src_map, copied * itemsize, nbytes)
                    bar.update(nbytes)
                out_pos += upto - copied
                copied = upto

            for position, length in insertions:
                copy_clean(position)
                written = 0
                while written < length:
                    noise = take_noise(min(NOISE_CHUNK, length - written))
                    data = noise.tobytes()
                    train_out.write(data)
                    noise_out.write(data)
                    noise_eots += int(np.count_nonzero(noise == parent.eot_id))
                    written += len(noise)
                    bar.update(len(data))
                    pause_for_tests("inject.write")
                if spans and spans[-1][0] + spans[-1][1] == out_pos:
                    spans[-1][1] += length  # adjacent noise documents form one span
                else:
                    spans.append([out_pos, length])
                out_pos += length
            copy_clean(clean)
    finally:
        stream.close()
        train_hash, noise_hash = train_out.finish(), noise_out.finish()
        bar.close()
        if src_map is not None:
            with contextlib.suppress(BufferError):  # a view still held elsewhere: let GC unmap it
                src_map.close()
    return train_hash, noise_hash, spans, noise_eots
