"""Window features (`noisylm.scan.features`) against a per-window brute force."""

from __future__ import annotations

import numpy as np
import pytest

from noisylm.scan.features import robust_location, window_features


def test_window_features_brute_force():
    rng = np.random.default_rng(0)
    window = 16
    tokens = rng.integers(0, 40, size=16 * 25 + 5).astype(np.uint16)  # a 5-token tail has no window
    table = rng.random(40) * 5
    for chunk in (32, 1 << 20):
        features = window_features(tokens, table, window, chunk)
        assert len(features.surprisal) == 25
        for w in range(25):
            x = tokens[w * window : (w + 1) * window]
            assert features.surprisal[w] == pytest.approx(table[x].mean(), rel=1e-5)
            assert features.distinct[w] == pytest.approx(len(np.unique(x)) / window)
            assert features.id_mean[w] == pytest.approx(x.mean(), rel=1e-5)
            assert features.id_std[w] == pytest.approx(x.std(), rel=1e-4)
    short = window_features(tokens[:5], table, window, 32)  # shorter than one window: one short window
    assert short.distinct[0] == pytest.approx(len(np.unique(tokens[:5])) / 5)


def test_robust_z_and_location():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    med, robust_std = robust_location(values)
    assert med == 3.0 and robust_std == pytest.approx(1.4826 * 1.0)  # MAD = median(|x − 3|) = 1
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 40, size=64 * 200).astype(np.uint16)
    tokens[64 * 100 : 64 * 101] = 7  # one window of a single repeated id
    z = window_features(tokens, np.ones(40), 64, 1 << 20).robust_z()
    assert np.argmin(z["distinct"]) == 100 and z["distinct"][100] < -6
