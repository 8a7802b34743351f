"""A shard set without given spans (`noisylm.scan.filtering.write_filtered`): token-mask brute force, the
manifest's filter record, and `verify`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from noisylm.data.shards import MANIFEST, ShardSet, verify
from noisylm.errors import NoisyLMError
from noisylm.scan.filtering import write_filtered
from scan_helpers import random_spans, span_mask


def test_write_filtered_removes_exactly_the_spans(noisy_bytes, tmp_path):
    shards = ShardSet.open(noisy_bytes)
    source = np.asarray(shards.tokens("train"))
    spans = random_spans(np.random.default_rng(0), len(source), 25)
    record = {"detector": {"detector": "test"}, "alpha_hat": 0.1}
    out = write_filtered(shards, spans, tmp_path / "f", record, overwrite=False)
    filtered = ShardSet.open(out)
    expected = source[~span_mask(spans, len(source))]
    assert np.array_equal(np.asarray(filtered.tokens("train")), expected)
    assert filtered.splits["train"].documents == int((expected == shards.eot_id).sum())
    assert (out / "val.bin").read_bytes() == (noisy_bytes / "val.bin").read_bytes()
    assert filtered.noise is None and not filtered.has("noise")
    saved = json.loads((out / MANIFEST).read_text())["filter"]
    assert saved["removed_spans"] == spans.tolist() and saved["removed_tokens"] == int(spans[:, 1].sum())
    assert saved["detector"] == {"detector": "test"} and saved["parent"]["noise"]["kind"] == "uniform"
    assert saved["parent"]["train_tokens"] == len(source)
    assert verify(out) == []
    with pytest.raises(NoisyLMError, match="exists"):
        write_filtered(shards, spans, out, record, overwrite=False)
