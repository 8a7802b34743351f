"""Paired statistics over seeds (`noisylm.probing.protocol.paired`): the exact sign-flip p-value
against an explicit enumeration of all 2^n sign vectors, the t interval against hand computation
with tabulated t quantiles."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from noisylm.probing.protocol.paired import (
    MIN_SEEDS_FOR_P,
    paired_difference,
    sign_flip_p_value,
    t_interval,
)


def _brute_force_p(differences):
    """Share of the 2^n explicit sign vectors whose |signed sum| is at least the observed |sum|."""
    observed = abs(sum(differences))
    extreme = 0
    for signs in itertools.product((1, -1), repeat=len(differences)):
        total = sum(s * d for s, d in zip(signs, differences, strict=True))
        extreme += abs(total) >= observed - 1e-9
    return extreme / 2 ** len(differences)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 8, 11, 17])
def test_sign_flip_p_value_equals_explicit_enumeration(n):
    rng = random.Random(n)
    for trial in range(3):
        # Accuracy differences in percentage points: multiples of 100/N test examples, often tied.
        differences = [round(rng.gauss(0.3 * trial, 1.0) * 4) / 4 for _ in range(n)]
        assert sign_flip_p_value(differences) == pytest.approx(_brute_force_p(differences), abs=1e-12)


def test_smallest_p_values_by_number_of_seeds():
    # All differences of one sign: only the observed signs and their mirror image are as extreme.
    assert sign_flip_p_value([0.5, 1.0, 0.25, 2.0, 0.75]) == 2 / 2**5 == 0.0625
    assert sign_flip_p_value([0.5, 1.0, 0.25, 2.0, 0.75, 1.5]) == 2 / 2**6
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0  # no difference at all


def test_t_interval_against_hand_computation():
    # d = 1..5: mean 3, sample sd sqrt(2.5), se = sqrt(2.5 / 5); t(0.975, df 4) = 2.776445 (tables).
    mean, se, (low, high) = t_interval([1, 2, 3, 4, 5])
    assert mean == 3 and se == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert (low, high) == pytest.approx(
        (3 - 2.776445 * math.sqrt(0.5), 3 + 2.776445 * math.sqrt(0.5)), abs=1e-5
    )
    # n = 2: t(0.975, df 1) = 12.706205; d = (0, 1): mean 0.5, sd 1/sqrt(2), se 0.5.
    mean, se, (low, high) = t_interval([0.0, 1.0])
    assert (mean, se) == pytest.approx((0.5, 0.5))
    assert (low, high) == pytest.approx((0.5 - 12.706205 * 0.5, 0.5 + 12.706205 * 0.5), abs=1e-5)
    # n = 8 (the study preset): t(0.975, df 7) = 2.364624.
    values = [0.2, -0.1, 0.4, 0.3, 0.0, 0.5, 0.1, 0.2]
    mean = sum(values) / 8
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 7)
    _, se, (low, high) = t_interval(values)
    assert se == pytest.approx(sd / math.sqrt(8))
    assert (low, high) == pytest.approx(
        (mean - 2.364624 * sd / 8**0.5, mean + 2.364624 * sd / 8**0.5), abs=1e-6
    )
    assert t_interval([4.2]) == (4.2, None, None)


def test_paired_difference_reports_p_only_from_six_seeds_and_says_within_noise():
    ce = [80.0, 81.0, 79.5, 80.5, 80.0]
    five = paired_difference([80.5, 80.5, 80.0, 81.5, 80.0], ce)
    assert five.differences == (0.5, -0.5, 0.5, 1.0, 0.0) and five.mean == pytest.approx(0.3)
    assert five.p_sign_flip is None and MIN_SEEDS_FOR_P == 6  # 5 seeds: p could never be below 0.0625
    assert five.within_noise and five.text() == (
        f"+0.30 [{five.ci95[0]:+.2f}, {five.ci95[1]:+.2f}] (within noise)"
    )
    assert five.text().startswith("+0.30 [-0.41, +1.01]")  # 0.3 ± 2.776445 · sqrt(0.325 / 5) = 0.3 ± 0.708
    eight = paired_difference([1.0, 1.5, 0.5, 1.0, 2.0, 1.0, 0.5, 1.5], [0.0] * 8)
    assert eight.within_noise is False and eight.p_sign_flip == pytest.approx(2 / 2**8)
    assert eight.text() == f"+1.12 [{eight.ci95[0]:+.2f}, {eight.ci95[1]:+.2f}], p = 0.00781"
    record = eight.as_dict()
    assert record["n"] == 8 and record["within_noise"] is False and record["text"] == eight.text()
    one = paired_difference([81.0], [80.0])
    assert one.ci95 is None and one.within_noise is None and one.text() == "+1.00 (1 seed: no interval)"
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])
