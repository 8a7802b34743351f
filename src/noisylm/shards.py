"""Token shard sets: the on-disk format every stage reads and writes.

A shard set is a directory::

    train.bin      uint16 (or uint32) token ids, documents separated by the end-of-text id (nanoGPT format)
    val.bin        same, the validation split
    noise.bin      only in sets made by `noisylm inject`: the injected noise alone
    manifest.json  tokenizer, vocab size, dtype, per-split token/document counts and sha256,
                   sources, seed, noise record (kind, α, spans), provenance

nanoGPT reads ``train.bin`` unchanged with ``np.memmap(path, dtype=np.uint16, mode="r")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import read_json
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
                )
                for name, info in manifest["splits"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise NoisyLMError(
                f"manifest {path / MANIFEST} is missing or has a bad field ({exc}); regenerate the shard set"
            ) from None

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
        """The split's token ids as a read-only memmap."""
        if split not in self.splits:
            raise NoisyLMError(
                f"shard set {self.path} has no split {split!r} (it has {', '.join(self.splits)})"
            )
        info = self.splits[split]
        if info.tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / info.file, dtype=self.dtype, mode="r")

    @property
    def noise(self) -> dict[str, Any] | None:
        """The injection record (kind, params, seed, α, spans) or None for a clean set."""
        return self.manifest.get("noise")

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.name}={s.tokens:,}" for s in self.splits.values())
        return f"ShardSet({str(self.path)!r}, tokenizer={self.tokenizer!r}, {counts})"
