"""Tokenizers: ids must equal tiktoken's own `gpt2` encoding, built by tiktoken's loader."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import numpy as np
import pytest

from noisylm.data.tokenizers import get_tokenizer, token_dtype
from noisylm.errors import UsageError

GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}

SAMPLES = [
    "Hello world",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "def f(x):\n    return x ** 2  # comment\t\n\n",
    "Ünïcödé — 日本語テキスト 🙂 and numbers 3.14159 1234567",
    "  leading spaces and trailing   ",
    "<|endoftext|> is plain text here",
    "",
]


@pytest.fixture(scope="module")
def tiktoken_reference(tmp_path_factory, monkeypatch_module):
    """tiktoken.get_encoding('gpt2') served from a private cache filled with the bundled files:
    tiktoken's own parser and regex, no network."""
    import tiktoken
    import tiktoken.registry

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    assets = resources.files("noisylm") / "assets" / "gpt2"
    for name, url in GPT2_URLS.items():
        data = gzip.decompress((assets / f"{name}.gz").read_bytes())
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    monkeypatch_module.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tiktoken.registry.ENCODINGS.pop("gpt2", None)
    enc = tiktoken.get_encoding("gpt2")
    yield enc
    tiktoken.registry.ENCODINGS.pop("gpt2", None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_gpt2_known_ids():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)


def test_gpt2_matches_tiktoken(tiktoken_reference):
    tok = get_tokenizer("gpt2")
    for text in SAMPLES:
        assert tok.encode(text) == tiktoken_reference.encode_ordinary(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(SAMPLES) == [tiktoken_reference.encode_ordinary(t) for t in SAMPLES]


def test_bytes_tokenizer_round_trip():
    tok = get_tokenizer("bytes")
    text = "naïve café ☕"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert max(ids) < 256 and tok.eot_id == 256 and tok.vocab_size == 257
    assert tok.decode(ids + [tok.eot_id]) == text
    assert np.array_equal(tok.encode_to_array(text), np.array(ids, dtype=np.uint16))


def test_token_dtype():
    assert token_dtype(257) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_unknown_tokenizer_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown tokenizer 'bpe'"):
        get_tokenizer("bpe")
