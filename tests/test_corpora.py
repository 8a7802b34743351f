"""Bundled corpora and the streaming document reader."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noisylm.data.corpora import (
    BUNDLED,
    bundled_corpora,
    bundled_corpus,
    iter_documents,
    iter_pieces,
    resolve_inputs,
    split_pieces,
)
from noisylm.data.tokenizers import get_tokenizer
from noisylm.errors import NoisyLMError, UsageError


def test_bundled_corpora_ship_with_licences():
    corpora = bundled_corpora()
    assert set(corpora) == set(BUNDLED) == {"shakespeare", "python-docs"}
    shakespeare = sorted(corpora["shakespeare"].glob("*.txt.gz"))
    assert len(shakespeare) == 42
    assert len(list(corpora["python-docs"].rglob("*.rst.txt.gz"))) == 53
    assert (corpora["shakespeare"].parent / "COPYING.shakespeare-package.txt").is_file()
    assert (corpora["python-docs"].parent / "COPYRIGHT.debian").is_file()
    hamlet = gzip.decompress((corpora["shakespeare"] / "hamlet_gut.txt.gz").read_bytes()).decode("utf-8")
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in hamlet
    with pytest.raises(UsageError, match="unknown corpus 'klingon'"):
        bundled_corpus("klingon")


def test_resolve_inputs_expands_folders_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z")
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"text": "c"}\n'))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not text: skipped in folders
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("s")
    files = resolve_inputs([tmp_path])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.md", "b/z.txt", "c.jsonl.gz"]
    assert resolve_inputs([tmp_path / "image.png"]) == [tmp_path / "image.png"]  # named explicitly: kept


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no text files"),
    ],
)
def test_resolve_inputs_errors(tmp_path, setup, message):
    with pytest.raises(NoisyLMError, match=message):
        resolve_inputs([setup(tmp_path)])
    with pytest.raises(UsageError, match="no input"):
        resolve_inputs([])


def test_documents_per_file_jsonl_line_and_separator(tmp_path):
    (tmp_path / "one.txt").write_text("first document\nwith two lines\n")
    (tmp_path / "two.jsonl").write_text(
        json.dumps({"text": "json doc 1", "id": 1}) + "\n\n" + json.dumps({"text": "json doc 2"}) + "\n"
    )
    (tmp_path / "three.txt.gz").write_bytes(gzip.compress(b"A<|endoftext|>  \n<|endoftext|>B"))
    docs = list(iter_documents([tmp_path]))
    # files in sorted order: one.txt, three.txt.gz, two.jsonl
    assert docs == [
        "first document\nwith two lines\n",
        "A<|endoftext|>  \n<|endoftext|>B",
        "json doc 1",
        "json doc 2",
    ]
    split = list(iter_documents([tmp_path / "three.txt.gz"], doc_separator="<|endoftext|>"))
    assert split == ["A", "B"]  # the whitespace-only document in between is dropped


def test_crlf_is_kept_and_whitespace_only_files_are_skipped(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"line one\r\nline two\r\n")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    assert list(iter_documents([tmp_path])) == ["line one\r\nline two\r\n"]


def test_bad_jsonl_and_bad_utf8_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(NoisyLMError, match=r"bad.jsonl:2 is not valid JSON"):
        list(iter_documents([bad]))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "text here"}\n')
    with pytest.raises(NoisyLMError, match=r"nofield.jsonl:1 has no string field 'text'.*--text-field"):
        list(iter_documents([nofield]))
    assert list(iter_documents([nofield], text_field="body")) == ["text here"]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(NoisyLMError, match="latin1.txt is not valid UTF-8"):
        list(iter_documents([latin1]))
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"hello world" * 100)[:20])
    with pytest.raises(NoisyLMError, match="cannot read .*broken.txt.gz"):
        list(iter_documents([broken]))


def test_long_documents_are_cut_where_gpt2_ids_do_not_change():
    """Pieces encoded one by one give exactly the ids of the whole document (a real play)."""
    tok = get_tokenizer("gpt2")
    play = gzip.decompress((bundled_corpora()["shakespeare"] / "macbeth_gut.txt.gz").read_bytes()).decode()
    pieces = list(split_pieces([play[i : i + 777] for i in range(0, len(play), 777)], None, piece_chars=2000))
    assert len(pieces) > 40 and all(not ends for _, ends in pieces[:-1]) and pieces[-1][1]
    assert "".join(p for p, _ in pieces) == play
    assert [i for p, _ in pieces for i in tok.encode(p)] == tok.encode(play)


@settings(max_examples=60, deadline=None, database=None)
@given(
    text=st.lists(st.sampled_from(list("ab1 ,.'\n\t\ré日") + ["  ", "'s", "\n\n"]), max_size=150).map(
        "".join
    ),
    piece_chars=st.integers(4, 40),
    separator=st.sampled_from([None, "\n\n", "<|endoftext|>"]),
)
def test_split_pieces_is_lossless_and_tokenization_safe(text, piece_chars, separator):
    tok = get_tokenizer("gpt2")
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    pieces = list(split_pieces(chunks, separator, piece_chars=piece_chars))
    docs, current = [], []
    for piece, ends in pieces:
        current.append(piece)
        if ends:
            docs.append(current)
            current = []
    assert not current
    expected = text.split(separator) if separator else [text]
    expected = [d for d in expected if d.strip()]
    assert ["".join(d) for d in docs] == expected
    for doc in docs:
        assert [i for p in doc for i in tok.encode(p)] == tok.encode("".join(doc))


def test_iter_pieces_reports_source_index(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
    pieces = list(iter_pieces(resolve_inputs([tmp_path])))
    assert [(p.text, p.source, p.ends_document) for p in pieces] == [("a.txt", 0, True), ("b.txt", 1, True)]


def test_a_long_stretch_without_spaces_is_cut_at_the_next_safe_point():
    tok = get_tokenizer("gpt2")
    text = "x" * 500 + " tail words here\nand more " * 20
    pieces = list(split_pieces([text], None, piece_chars=100))
    assert len(pieces[0][0]) == 500  # not cut inside the 500-character word
    assert [i for p, _ in pieces for i in tok.encode(p)] == tok.encode(text)
    forced = list(split_pieces(["y" * 1000], None, piece_chars=100))  # no safe point at all
    assert "".join(p for p, _ in forced) == "y" * 1000 and len(forced) > 1
