"""`TheoryConfig`: bad options are one clear usage error naming the flag."""

from __future__ import annotations

import pytest

from noisylm.errors import UsageError
from noisylm.theory.config import TheoryConfig


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"k": 0.0}, "--k"),
        ({"k": float("inf")}, "--k"),
        ({"eval_windows": 0}, "--eval-windows"),
        ({"lemma1_windows": 0}, "--lemma1-windows"),
        ({"batch_size": 0}, "--batch-size"),
        ({"threads": 0}, "--threads"),
        ({"lemma1_max_tokens": -1}, "--lemma1-max-tokens"),
    ],
)
def test_bad_options(options, flag):
    with pytest.raises(UsageError, match=flag):
        TheoryConfig(**options)


def test_defaults_are_valid():
    config = TheoryConfig()
    assert config.k is None and config.eval_windows == 64 and config.device == "cpu"
