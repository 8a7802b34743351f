"""Noise generators against their definitions: chi-square, moments, boosted ids, histogram, realism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from noisylm.data.noise import GPT2_NOISE_VOCAB, NOISE_KINDS, BoostedSampler, generate_noise, make_sampler
from noisylm.errors import NoisyLMError, UsageError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("V", [256, GPT2_NOISE_VOCAB])
def test_uniform_passes_chi_square_and_stays_in_range(V):
    x = generate_noise("uniform", 400_000, V, rng(1))
    assert x.dtype == np.uint16 and x.min() >= 0 and x.max() < V
    bins = 256 if V == 256 else 100  # GPT-2: 100 equal-width bins of ids
    observed = np.bincount((x.astype(np.int64) * bins) // V, minlength=bins)
    expected = np.diff(np.ceil(np.arange(bins + 1) * V / bins)) / V * len(x)
    assert sps.chisquare(observed, expected).pvalue > 1e-3
    assert (x == V - 1).any() and (x == 0).any()


def test_gaussian_matches_the_paper_for_gpt2_and_scales_otherwise():
    x = generate_noise("gaussian", 200_000, GPT2_NOISE_VOCAB, rng(2)).astype(np.float64)
    assert abs(x.mean() - 25128) < 5 and abs(x.std() - 500) < 5
    assert np.array_equal(x, np.rint(x))
    small = generate_noise("gaussian", 100_000, 256, rng(3)).astype(np.float64)
    assert abs(small.mean() - 128) < 0.1 and abs(small.std() - 2.56) < 0.1
    custom = make_sampler("gaussian", 1000, rng(4), mean=2, std=50)
    y = custom.sample(50_000)
    assert y.min() == 0 and (y == 0).mean() > 0.4  # clipped at 0
    assert custom.params["mean"] == 2 and custom.params["std"] == 50


def test_boosted_raises_about_100_mostly_low_ids():
    sampler = make_sampler("boosted", GPT2_NOISE_VOCAB, rng(5))
    assert isinstance(sampler, BoostedSampler)
    ids = np.array(sampler.params["boosted_ids"])
    assert len(ids) == len(set(ids.tolist())) == 100
    assert (ids < 1000).sum() == 80 and ids.max() < GPT2_NOISE_VOCAB
    factors = np.array(sampler.params["factors"])
    assert factors.min() >= 5 - 1e-6 and factors.max() <= 50 + 1e-6
    x = sampler.sample(2_000_000)
    counts = np.bincount(x, minlength=GPT2_NOISE_VOCAB)
    p = sampler.probabilities()
    # each boosted id is far above the uniform floor, and the whole histogram fits p
    others = np.setdiff1d(np.arange(GPT2_NOISE_VOCAB), ids)
    assert counts[ids].min() > 2 * counts[others].mean()
    assert np.corrcoef(counts[ids], p[ids] * len(x))[0, 1] > 0.98
    assert (
        sps.chisquare(
            np.append(counts[ids], counts[others].sum()), np.append(p[ids], p[others].sum()) * len(x)
        ).pvalue
        > 1e-3
    )
    # the low ids (< 1000) are more frequent than the rest, as in Fig. 8(b)
    assert counts[:1000].mean() > 2 * counts[1000:].mean()  # expected ~2.5x with the defaults


def test_histogram_from_npy_and_json(tmp_path):
    weights = np.zeros(256)
    weights[[3, 10, 200]] = [1, 2, 7]
    np.save(tmp_path / "h.npy", weights)
    (tmp_path / "h.json").write_text(json.dumps({"3": 1, "10": 2, "200": 7}))
    (tmp_path / "l.json").write_text(json.dumps(weights.tolist()))
    draws = [
        generate_noise("histogram", 100_000, 256, rng(6), histogram=str(tmp_path / f))
        for f in ("h.npy", "h.json", "l.json")
    ]
    assert np.array_equal(draws[0], draws[1]) and np.array_equal(draws[0], draws[2])
    counts = np.bincount(draws[0], minlength=256)
    assert set(np.flatnonzero(counts)) == {3, 10, 200}
    assert sps.chisquare(counts[[3, 10, 200]], np.array([0.1, 0.2, 0.7]) * 100_000).pvalue > 1e-3


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, -1, 2], "non-negative"),
        ([0, 0], "positive sum"),
        ({"300": 5}, "token id 300 >= 256"),
        ("not json", "cannot read histogram"),
    ],
)
def test_bad_histograms(tmp_path, content, message):
    path = tmp_path / "h.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(NoisyLMError, match=message):
        make_sampler("histogram", 256, rng(), histogram=str(path))
    with pytest.raises(NoisyLMError, match="not found"):
        make_sampler("histogram", 256, rng(), histogram=str(tmp_path / "missing.npy"))
    with pytest.raises(UsageError, match="--histogram"):
        make_sampler("histogram", 256, rng())


@pytest.mark.parametrize("tokenizer, V", [("bytes", 256), ("gpt2", GPT2_NOISE_VOCAB)])
def test_mojibake_is_mis_decoded_real_text(tokenizer, V):
    from noisylm.data.tokenizers import get_tokenizer

    sampler = make_sampler("mojibake", V, rng(7), tokenizer=tokenizer)
    x = sampler.sample(20_000)
    assert len(x) == 20_000 and x.max() < V
    assert np.array_equal(x, make_sampler("mojibake", V, rng(7), tokenizer=tokenizer).sample(20_000))
    text = get_tokenizer(tokenizer).decode(x.tolist())
    non_ascii = sum(ord(c) > 127 for c in text) / len(text)
    assert non_ascii > 0.3  # garbled: mostly not plain English
    fragment = make_sampler(
        "mojibake", V, rng(8), tokenizer=tokenizer, variants=["utf8->utf-16-le"]
    ).fragment()
    assert any("\u4e00" <= c <= "\u9fff" for c in fragment)  # "Bush hid the facts": CJK from ASCII text
    with pytest.raises(UsageError, match="unknown codec"):
        make_sampler("mojibake", V, rng(), tokenizer=tokenizer, variants=["utf8->klingon"])


def test_corpus_noise_is_the_source_train_tokens_from_a_document_start(python_docs_bytes):
    from noisylm.data.shards import ShardSet

    source = ShardSet.open(python_docs_bytes)
    tokens = np.asarray(source.tokens("train"))
    sampler = make_sampler("corpus", 256, rng(9), tokenizer="bytes", source=python_docs_bytes)
    start = sampler.params["start"]
    assert start == 0 or tokens[start - 1] == 256
    n = len(tokens) + 1000  # more than one pass: wraps around
    x = sampler.sample(n)
    assert np.array_equal(x, np.roll(tokens, -start)[np.arange(n) % len(tokens)])
    assert sampler.passes == pytest.approx(n / len(tokens))
    with pytest.raises(UsageError, match="same tokenizer"):
        make_sampler("corpus", 256, rng(), tokenizer="gpt2", source=python_docs_bytes)


def test_same_seed_same_noise_and_streams_continue():
    for kind in ("uniform", "boosted", "gaussian"):
        a = generate_noise(kind, 10_000, 1000, rng(10))
        b = generate_noise(kind, 10_000, 1000, rng(10))
        c = generate_noise(kind, 10_000, 1000, rng(11))
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        s = make_sampler(kind, 1000, rng(10))
        assert not np.array_equal(s.sample(5000), s.sample(5000))  # one stream, not a restart


def test_unknown_kind_and_parameters_are_usage_errors():
    assert set(NOISE_KINDS) == {"uniform", "boosted", "gaussian", "mojibake", "histogram", "corpus"}
    with pytest.raises(UsageError, match="unknown noise kind 'pink'"):
        make_sampler("pink", 256, rng())
    with pytest.raises(UsageError, match="unknown parameter.*stdev.*gaussian"):
        make_sampler("gaussian", 256, rng(), stdev=3)
    with pytest.raises(UsageError, match="std=-1"):
        make_sampler("gaussian", 256, rng(), std=-1)
