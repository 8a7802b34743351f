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


# Texts whose ids depend on what surrounds them if two were ever encoded as one: trailing spaces and
# newlines (the pattern's ``\s+(?!\S)``), a contraction after a text, the end-of-text string inside a
# text (plain text) or cut at a text boundary, an empty text, a lone surrogate (JSON can carry one).
DOCUMENTS = [
    "first line\n\n   ",
    "'ll be back",
    "",
    "   spaced  ",
    "ends with <|endoftext",
    "|> starts with the rest",
    "Ünïcödé 🙂 3.14",
    "broken \ud83d surrogate",
    "\n",
]


def test_gpt2_encode_documents_equals_each_text_alone_plus_eot(tiktoken_reference):
    tok = get_tokenizer("gpt2")

    def reference(texts: list[str]) -> list[int]:
        return [i for t in texts for i in tiktoken_reference.encode_ordinary(t) + [50256]]

    inside = "holds <|endoftext|> as text"
    for texts in (DOCUMENTS, DOCUMENTS[:3] + [inside, inside] + DOCUMENTS[3:] + [inside], [], ["one"]):
        got = tok.encode_documents(texts)
        assert got.dtype == np.uint16 and got.tolist() == reference(texts)
    assert tok.encode_to_array(DOCUMENTS[7]).tolist() == tiktoken_reference.encode_ordinary(DOCUMENTS[7])


def test_bytes_encode_documents_is_utf8_plus_eot():
    texts = ["abc", "", "é\n"]
    expected = [b for t in texts for b in [*t.encode("utf-8"), 256]]
    assert get_tokenizer("bytes").encode_documents(texts).tolist() == expected


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


# ----------------------------------------------------------------------------- trained BPE (bpe:N)


@pytest.fixture(scope="module")
def python_docs_bpe():
    from noisylm.data.corpora import bundled_corpus, iter_documents
    from noisylm.data.tokenizers import train_bpe

    docs = list(iter_documents([bundled_corpus("python-docs")]))
    return docs, train_bpe(docs, 512)


def test_bpe_round_trips_bundled_corpora(python_docs_bpe):
    from noisylm.data.corpora import bundled_corpus, iter_documents

    docs, tok = python_docs_bpe
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("bpe:512", 513, 512)
    shakespeare = list(iter_documents([bundled_corpus("shakespeare")]))[:3]
    for text in docs[:5] + shakespeare + SAMPLES:
        ids = tok.encode(text)
        assert max(ids, default=0) < 512  # end-of-text never comes from text
        assert tok.decode(ids) == text
    # The corpus it was trained on compresses: fewer tokens than bytes.
    assert len(tok.encode(docs[0])) < 0.5 * len(docs[0].encode("utf-8"))


def test_bpe_eot_is_plain_text_and_skipped_when_decoding(python_docs_bpe):
    _, tok = python_docs_bpe
    ids = tok.encode("<|endoftext|>")
    assert tok.eot_id not in ids and tok.decode(ids) == "<|endoftext|>"
    assert tok.decode([*tok.encode("a"), tok.eot_id, *tok.encode("b")]) == "ab"
    assert tok.encode_documents(["a", "b"]).tolist() == [*tok.encode("a"), 512, *tok.encode("b"), 512]


def test_bpe_training_is_deterministic_across_processes(tmp_path):
    """Two trainings in separate processes (HF tokenizers has had run-to-run differences) give
    byte-identical tokenizer files."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from noisylm.data.corpora import bundled_corpus, iter_documents\n"
        "from noisylm.data.tokenizers import train_bpe\n"
        "train_bpe(iter_documents([bundled_corpus('python-docs')]), 700).save(sys.argv[1])\n"
    )
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_bpe_file_round_trip_and_load_tokenizer(python_docs_bpe, tmp_path):
    from noisylm.data.tokenizers import BPE_FILE, BPETokenizer, load_tokenizer

    _, tok = python_docs_bpe
    tok.save(tmp_path / BPE_FILE)
    again = load_tokenizer("bpe:512", tmp_path)
    assert isinstance(again, BPETokenizer) and again.sha256 == tok.sha256
    assert again.encode(SAMPLES[1]) == tok.encode(SAMPLES[1])
    with pytest.raises(Exception, match="holds bpe:512"):
        load_tokenizer("bpe:600", tmp_path)
    with pytest.raises(UsageError, match="missing"):
        load_tokenizer("bpe:512", tmp_path / "nowhere")
    assert load_tokenizer("bytes", None).name == "bytes"


def test_bpe_in_transformers_gives_the_same_ids(python_docs_bpe):
    _, tok = python_docs_bpe
    hf = tok.to_transformers()
    for text in SAMPLES[:5]:
        assert hf(text)["input_ids"] == tok.encode(text)
    assert hf.eos_token_id == tok.eot_id
    assert hf.decode(tok.encode(SAMPLES[1])) == SAMPLES[1]


@pytest.mark.parametrize("name", ["bpe:", "bpe:12", "bpe:x", "bpe:70000"])
def test_bad_bpe_names(name):
    from noisylm.data.tokenizers import parse_bpe_name

    with pytest.raises(UsageError, match="bpe:N"):
        parse_bpe_name(name)
    with pytest.raises(UsageError):
        get_tokenizer(name)


def test_bpe_larger_than_the_corpus_supports_is_a_clear_error():
    from noisylm.data.tokenizers import train_bpe

    with pytest.raises(UsageError, match="supports only"):
        train_bpe(["tiny corpus, tiny corpus"], 5000)
