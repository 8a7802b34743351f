"""`ScanConfig`: bad detector settings are one clear usage error; --model implies the model detector."""

from __future__ import annotations

import pytest

from noisylm.errors import UsageError
from noisylm.scan.config import ScanConfig


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"detector": "magic"}, "unknown detector"),
        ({"detector": "model"}, "--model CKPT"),
        ({"window": 50}, "multiple of stride"),
        ({"stride": 0}, "multiple of stride"),
        ({"iterations": 0}, "iterations"),
        ({"uniform_weight": 0.0}, "uniform_weight"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"robust_z": 0.0}, "robust_z"),
        ({"min_span": 0}, "min_span"),
        ({"chunk_tokens": 10}, "chunk_tokens"),
    ],
)
def test_bad_settings(options, message):
    with pytest.raises(UsageError, match=message):
        ScanConfig(**options)


def test_model_implies_model_detector_and_chunks_hold_whole_windows():
    assert ScanConfig(model="runs/x").detector == "model"
    assert ScanConfig(window=64, chunk_tokens=1000).chunk_tokens == 960
