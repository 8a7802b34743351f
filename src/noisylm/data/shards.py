"""Token shard sets: the on-disk format every stage reads and writes.

A shard set is a directory::

    train.bin      uint16 (or uint32) token ids, documents separated by the end-of-text id (nanoGPT format)
    val.bin        same, the validation split
    noise.bin      only in sets made by `noisylm inject`: the injected noise alone
    manifest.json  tokenizer, vocab size, dtype, per-split token/document counts, sha256, size and
                   mtime_ns, sources, seed, noise record (kind, α, spans), provenance

nanoGPT reads ``train.bin`` unchanged with ``np.memmap(path, dtype=np.uint16, mode="r")``.

Integrity: `ShardSet.tokens` / `ShardSet.file` (what training, injection, scanning and the other
stages read through) check a split against the sha256 in the manifest before handing it out, once
per opened set. A file whose size and ``mtime_ns`` still equal the manifest's is trusted without
hashing; any other file (or a manifest that records no size/mtime) is re-hashed, streamed. An edit
that keeps the size and restores the mtime (``os.utime``) is therefore not seen there; `verify`
always re-hashes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import _json_default, atomic_write_json, atomic_write_text, read_json, sha256_file
from noisylm.errors import NoisyLMError

SHARD_FORMAT = "noisylm-shards/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SplitInfo:
    """One split's file and what the manifest says about it."""

    name: str
    file: str
    tokens: int
    documents: int | None
    sha256: str | None
    bytes: int | None = None  # file size and mtime when the manifest was written: if both still
    mtime_ns: int | None = None  # match, the sha256 is trusted without re-hashing the file


class ShardSet:
    """A validated, read-only view of a shard directory.

    >>> shards = ShardSet.open("data/shakespeare")
    >>> shards.tokens("train")[:10]          # np.memmap, nothing loaded into RAM
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        try:
            self.tokenizer: str = manifest["tokenizer"]
            self.vocab_size: int = int(manifest["vocab_size"])
            self.eot_id: int = int(manifest["eot_id"])
            self.dtype = np.dtype(manifest["dtype"])
            self.splits: dict[str, SplitInfo] = {
                name: SplitInfo(
                    name=name,
                    file=info["file"],
                    tokens=int(info["tokens"]),
                    documents=info.get("documents"),
                    sha256=info.get("sha256"),
                    bytes=info.get("bytes"),
                    mtime_ns=info.get("mtime_ns"),
                )
                for name, info in manifest["splits"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise NoisyLMError(
                f"manifest {path / MANIFEST} is missing or has a bad field ({exc}); regenerate the shard set"
            ) from None
        self._checked: set[str] = set()  # splits whose hash has been checked

    @classmethod
    def open(cls, path: str | os.PathLike, check_sizes: bool = True) -> ShardSet:
        """Open ``path`` and check that every split file exists with the size the manifest states."""
        path = Path(path)
        if not path.is_dir():
            raise NoisyLMError(f"shard directory {path} not found; create it with `noisylm prepare`")
        manifest = read_json(path / MANIFEST, "shard manifest")
        if manifest.get("format") != SHARD_FORMAT:
            raise NoisyLMError(
                f"{path / MANIFEST} has format {manifest.get('format')!r}, expected {SHARD_FORMAT!r}; "
                "regenerate the shard set with `noisylm prepare`"
            )
        shards = cls(path, manifest)
        if check_sizes:
            for split in shards.splits.values():
                shards._check_size(split)
        return shards

    def _check_size(self, split: SplitInfo) -> None:
        file = self.path / split.file
        if not file.is_file():
            raise NoisyLMError(f"{file} is missing; the shard set is incomplete, regenerate it")
        size = file.stat().st_size
        if size % self.dtype.itemsize:
            raise NoisyLMError(
                f"{file} has {size} bytes, not a multiple of {self.dtype.itemsize} ({self.dtype}); "
                "the file is truncated or corrupt, regenerate it"
            )
        if size // self.dtype.itemsize != split.tokens:
            raise NoisyLMError(
                f"{file} holds {size // self.dtype.itemsize} tokens but the manifest says {split.tokens}; "
                "the manifest does not match its files, regenerate the shard set"
            )

    def has(self, split: str) -> bool:
        return split in self.splits

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memmap, after `file` has checked its hash."""
        self.file(split)
        return self._memmap(split)

    def file(self, split: str) -> Path:
        """The path of the split's file, checked against the manifest's sha256 first (once per opened
        set). Unchanged size and mtime_ns mean unchanged content; otherwise the file is re-hashed."""
        info = self._split(split)
        file = self.path / info.file
        if split in self._checked or info.sha256 is None:
            return file
        try:
            stat = file.stat()
        except OSError as exc:
            raise NoisyLMError(
                f"cannot read {file}: {exc.strerror or exc}; regenerate the shard set"
            ) from None
        unchanged = (info.bytes, info.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        if not unchanged and sha256_file(file) != info.sha256:
            raise NoisyLMError(
                f"{file} does not match the sha256 in {self.path / MANIFEST}: it changed or is corrupt; "
                f"run `noisylm verify {self.path}` and regenerate the shard set"
            )
        self._checked.add(split)
        return file

    def _split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            raise NoisyLMError(
                f"shard set {self.path} has no split {split!r} (it has {', '.join(self.splits)})"
            )
        return self.splits[split]

    def _memmap(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memmap, unchecked (for `verify`, which hashes itself)."""
        info = self._split(split)
        if info.tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / info.file, dtype=self.dtype, mode="r")

    @property
    def noise(self) -> dict[str, Any] | None:
        """The injection record (kind, params, seed, α, spans) or None for a clean set."""
        return self.manifest.get("noise")

    def noise_spans(self) -> np.ndarray:
        """Where the noise is in ``train.bin``: int64 array (n, 2) of sorted, disjoint
        ``[offset, length]`` in token coordinates; shape (0, 2) for a clean set."""
        record = self.noise
        spans = record.get("spans", []) if record else []
        return np.asarray(spans, dtype=np.int64).reshape(-1, 2)

    def clean_mask(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Boolean mask over ``train.bin[start:stop]``: True where the token is clean text."""
        stop = self.splits["train"].tokens if stop is None else stop
        mask = np.ones(max(0, stop - start), dtype=bool)
        for offset, length in self.noise_spans():
            lo, hi = max(offset, start), min(offset + length, stop)
            if lo < hi:
                mask[lo - start : hi - start] = False
        return mask

    def token_counts(self, split: str, chunk_tokens: int = 1 << 24) -> np.ndarray:
        """How often each id in [0, vocab_size) occurs in ``split``: int64, one streamed pass over the
        memmap, ``chunk_tokens`` at a time (bounded memory). An id >= vocab_size is a corrupt shard."""
        tokens = self.tokens(split)
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for lo in range(0, len(tokens), chunk_tokens):
            part = np.bincount(np.asarray(tokens[lo : lo + chunk_tokens]), minlength=self.vocab_size)
            if len(part) > self.vocab_size:
                file = self.path / self.splits[split].file
                raise NoisyLMError(
                    f"{file} holds token id {len(part) - 1}, but ids >= vocab size {self.vocab_size} are no "
                    "tokens: the shard set is corrupt, run `noisylm verify` and regenerate it"
                )
            counts += part
        return counts

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.name}={s.tokens:,}" for s in self.splits.values())
        return f"ShardSet({str(self.path)!r}, tokenizer={self.tokenizer!r}, {counts})"

    def tokenizer_record(self) -> dict[str, Any]:
        """The manifest fields of a trained tokenizer's file (empty for named tokenizers), for the
        manifests of shard sets derived from this one (inject, merge)."""
        return {k: self.manifest[k] for k in ("tokenizer_file", "tokenizer_sha256") if k in self.manifest}

    def copy_tokenizer_to(self, directory: Path) -> None:
        """Copy a trained tokenizer's file next to a derived artifact (noisy shards, a run directory)."""
        if "tokenizer_file" in self.manifest:
            shutil.copyfile(
                self.path / self.manifest["tokenizer_file"], Path(directory) / self.manifest["tokenizer_file"]
            )

    def load_tokenizer(self):
        """The `Tokenizer` these shards were made with (a trained ``bpe:N`` from its ``tokenizer.json``)."""
        from noisylm.data.tokenizers import load_tokenizer

        return load_tokenizer(self.tokenizer, self.path)


def entropy_nats(counts: np.ndarray) -> float:
    """Entropy (nats) of the unigram distribution of ``counts`` (e.g. `ShardSet.token_counts`): log V for
    uniform noise over V ids; 0 for no tokens."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically, indented, with the noise spans compact on one line.

    Each split whose file sits next to ``path`` gets its current size (``bytes``) and ``mtime_ns``
    recorded, so readers can trust its sha256 while both stay the same: write the manifest last.
    """
    folder = Path(path).parent
    splits = manifest.get("splits")
    if isinstance(splits, dict):
        stamped = {}
        for name, info in splits.items():
            file = folder / info["file"] if isinstance(info, dict) and "file" in info else None
            if file is not None and file.is_file():
                stat = file.stat()
                info = {**info, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            stamped[name] = info
        manifest = {**manifest, "splits": stamped}
    record = manifest.get("noise")
    spans = record.get("spans") if isinstance(record, dict) else None
    if spans is None:
        atomic_write_json(path, manifest)
        return
    marker = "__NOISYLM_SPANS__"
    text = json.dumps({**manifest, "noise": {**record, "spans": marker}}, indent=2, default=_json_default)
    compact = json.dumps([[int(o), int(n)] for o, n in spans], separators=(",", ":"))
    atomic_write_text(path, text.replace(json.dumps(marker), compact, 1) + "\n")


def verify(path: str | os.PathLike, chunk_tokens: int = 1 << 24) -> list[str]:
    """Every problem found in the shard set at ``path`` (empty list: all good).

    Recomputes each split's sha256, checks sizes, token ids < vocab size, document counts (= number
    of end-of-text ids), the tokenizer fields against the tokenizer registry and, for noisy sets, that
    the spans are sorted, disjoint and inside train.bin, that noise.bin equals the spans' tokens in
    order, and that the token counts and achieved α agree. Reads in chunks (bounded memory).
    """
    from noisylm.data.tokenizers import BPE_FILE, TOKENIZERS, token_dtype

    path = Path(path)
    try:
        shards = ShardSet.open(path, check_sizes=False)
    except NoisyLMError as exc:
        return [str(exc)]
    problems: list[str] = []
    tok_sizes: tuple[int, int] | None = None
    if shards.tokenizer.startswith("bpe:"):
        try:
            tok = shards.load_tokenizer()
            tok_sizes = (tok.vocab_size, tok.eot_id)
            recorded = shards.manifest.get("tokenizer_sha256")
            if recorded is not None and recorded != tok.sha256:
                problems.append(
                    f"{path / BPE_FILE} sha256 differs from the manifest; it changed or is corrupt"
                )
        except NoisyLMError as exc:
            problems.append(str(exc))
    elif shards.tokenizer in TOKENIZERS:
        tok_sizes = (TOKENIZERS[shards.tokenizer].vocab_size, TOKENIZERS[shards.tokenizer].eot_id)
    else:
        problems.append(f"manifest names unknown tokenizer {shards.tokenizer!r}")
    if tok_sizes is not None and tok_sizes != (shards.vocab_size, shards.eot_id):
        problems.append(
            f"manifest says vocab_size={shards.vocab_size}, eot_id={shards.eot_id}; tokenizer "
            f"{shards.tokenizer!r} has {tok_sizes[0]}, {tok_sizes[1]}"
        )
    if shards.dtype != token_dtype(shards.vocab_size):
        problems.append(f"dtype {shards.dtype} does not match vocab size {shards.vocab_size}")
    for required in ("train", "val"):
        if required not in shards.splits:
            problems.append(f"manifest has no {required!r} split")
    readable: set[str] = set()
    tops: dict[str, int] = {}  # largest id per split
    for split in shards.splits.values():
        try:
            shards._check_size(split)
        except NoisyLMError as exc:
            problems.append(str(exc))
            continue
        readable.add(split.name)
        file = path / split.file
        if split.sha256 is not None and sha256_file(file) != split.sha256:
            problems.append(f"{file} sha256 differs from the manifest; the file changed or is corrupt")
        tokens = shards._memmap(split.name)
        eots, top = 0, -1
        for lo in range(0, len(tokens), chunk_tokens):
            chunk = np.asarray(tokens[lo : lo + chunk_tokens])
            top = max(top, int(chunk.max()))
            eots += int(np.count_nonzero(chunk == shards.eot_id))
        tops[split.name] = top
        if top >= shards.vocab_size:
            problems.append(f"{file} holds token id {top} >= vocab size {shards.vocab_size}")
        if split.documents is not None and split.name in ("train", "val") and split.documents != eots:
            problems.append(
                f"{file}: manifest says {split.documents} documents but it has {eots} end-of-text tokens"
            )
    record = shards.noise
    if record is not None:
        problems += _verify_noise(shards, record, readable, chunk_tokens)
        high = (record.get("params") or {}).get("vocab_range", [0, shards.vocab_size])[1]
        if record.get("kind") != "corpus" and tops.get("noise", -1) >= high:
            problems.append(
                f"noise.bin holds id {tops['noise']}, outside the recorded noise range [0, {high})"
            )
    elif "noise" in shards.splits:
        problems.append("noise.bin is listed but the manifest has no noise record")
    return problems


def _verify_noise(shards: ShardSet, record: dict[str, Any], readable: set[str], chunk: int) -> list[str]:
    problems: list[str] = []
    try:
        spans = shards.noise_spans()
    except (TypeError, ValueError):
        return ["manifest noise.spans is not a list of [offset, length] pairs"]
    n_train = shards.splits["train"].tokens if "train" in shards.splits else 0
    if len(spans):
        ends = spans[:, 0] + spans[:, 1]
        if (spans[:, 1] <= 0).any() or (spans[:, 0] < 0).any() or ends[-1] > n_train:
            problems.append("noise spans must have positive lengths and lie inside train.bin")
        if (spans[1:, 0] < ends[:-1]).any():
            problems.append("noise spans are not sorted and disjoint")
    noise_tokens = int(spans[:, 1].sum())
    if record.get("noise_tokens") != noise_tokens:
        problems.append(
            f"noise record says {record.get('noise_tokens')} noise tokens; the spans hold {noise_tokens}"
        )
    if record.get("clean_tokens", 0) + noise_tokens != n_train:
        problems.append(
            f"clean_tokens {record.get('clean_tokens')} + noise tokens {noise_tokens} "
            f"!= {n_train} train tokens"
        )
    if n_train and abs(float(record.get("alpha_achieved", -1)) - noise_tokens / n_train) > 1e-12:
        problems.append(f"alpha_achieved {record.get('alpha_achieved')} != {noise_tokens}/{n_train}")
    if "noise" not in shards.splits:
        problems.append("the noise record has no noise.bin split; regenerate with `noisylm inject`")
        return problems
    if shards.splits["noise"].tokens != noise_tokens:
        problems.append(
            f"noise.bin holds {shards.splits['noise'].tokens} tokens; the spans hold {noise_tokens}"
        )
    elif {"train", "noise"} <= readable and not problems:
        train, noise = shards._memmap("train"), shards._memmap("noise")
        pos = 0
        for offset, length in spans:
            for lo in range(0, int(length), chunk):
                hi = min(int(length), lo + chunk)
                if not np.array_equal(train[offset + lo : offset + hi], noise[pos + lo : pos + hi]):
                    problems.append(f"noise.bin differs from train.bin in the span at offset {offset}")
                    return problems
            pos += int(length)
    return problems
