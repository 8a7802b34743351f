"""A copy of a shard set without the flagged spans (`noisylm scan --filter`), whose manifest records every
removed span and the detector settings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_dir, atomic_write_text, provenance, sha256_file
from noisylm.data.shards import MANIFEST, ShardSet


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
            open(shards.file("train"), "rb") as src,  # hash-checked like every read
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
