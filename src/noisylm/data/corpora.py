"""Where text comes from: the bundled corpora and a streaming reader for the user's files.

Inputs are text files (``.txt .text .md .rst``, or any file named explicitly), folders of them
(searched recursively, sorted, hidden entries skipped), any of those gzip-compressed (``.gz``), and
JSONL files (``.jsonl .ndjson``, optionally ``.gz``) whose lines are JSON objects with a text field.

Documents: one per text file, one per JSONL line. ``doc_separator`` splits text files (and JSONL
texts) further into documents at a literal string, e.g. ``"\\n\\n\\n"`` or ``"<|endoftext|>"`` for
dumps that concatenate documents; documents that are empty or whitespace-only are skipped.

The reader streams: a document longer than ``piece_chars`` characters is handed on in pieces cut at a
single space or newline between two non-space characters. GPT-2's pre-tokeniser never merges across
such a point, so encoding the pieces one by one gives exactly the ids of encoding the whole document
(tested); a document with no such point in 8 pieces' worth of text is cut where the limit falls.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from noisylm.errors import NoisyLMError, UsageError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")

BUNDLED = {
    "shakespeare": "42 Shakespeare plays and poems (5.0 MB, public domain): the training domain",
    "python-docs": "53 pages of the Python 3.11 documentation (2.0 MB, PSF licence): a second domain",
}

PIECE_CHARS = 1 << 20  # hand documents to the tokenizer in pieces of about 1 M characters
READ_CHARS = 1 << 20
_SAFE_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


@dataclass(frozen=True)
class Piece:
    """A document, or part of one when it is long; ``ends_document`` marks its last piece."""

    text: str
    ends_document: bool
    source: int  # index into the resolved input list


def bundled_corpora() -> dict[str, Path]:
    """Name → folder of the corpora shipped in the package (one gzip-compressed document per file)."""
    root = resources.files("noisylm") / "assets" / "corpora"
    return {name: Path(str(root / name / "texts")) for name in BUNDLED}


def bundled_corpus(name: str) -> Path:
    corpora = bundled_corpora()
    if name not in corpora:
        raise UsageError(f"unknown corpus {name!r}; choose one of: {', '.join(corpora)}")
    return corpora[name]


def _inner_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def is_jsonl(path: Path) -> bool:
    return _inner_suffix(path) in JSONL_SUFFIXES


def resolve_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders into their text/JSONL files (recursively, sorted); check that each exists."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and _inner_suffix(p) in TEXT_SUFFIXES + JSONL_SUFFIXES
            )
            if not found:
                raise NoisyLMError(
                    f"folder {path} holds no text files ({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)}, "
                    "optionally .gz); point to the files themselves or rename them"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise NoisyLMError(f"input {path} does not exist; check the path")
    if not files:
        raise UsageError("no input given; pass text files or folders, or --corpus NAME")
    return files


def _open_text(path: Path) -> io.TextIOBase:
    # newline="" keeps "\r\n" as written: the ids then depend only on the file's bytes.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _safe_cut(buf: str, limit: int) -> int:
    """Largest p <= limit where the text can be cut without changing GPT-2 tokenization, else 0."""
    start = max(0, limit - (1 << 16))
    last = 0
    for match in _SAFE_CUT.finditer(buf, start, limit + 1):
        last = match.start()
    if last == 0 and start > 0:  # rare: a 64 K stretch with no single space; search further back
        for match in _SAFE_CUT.finditer(buf, 0, limit + 1):
            last = match.start()
    return last


def split_pieces(
    chunks: Iterable[str], separator: str | None, piece_chars: int = PIECE_CHARS
) -> Iterator[tuple[str, bool]]:
    """Turn a stream of text chunks into (piece, ends_document) pairs, bounded in size.

    Documents are split at ``separator`` (None: the whole stream is one document); empty or
    whitespace-only documents are dropped; long documents are cut at tokenization-safe points.
    """
    buf = ""
    emitted = False  # has the current document already produced a piece?
    for chunk in chunks:
        buf += chunk
        if separator:
            *complete, buf = buf.split(separator)
            for doc in complete:
                if emitted or doc.strip():
                    yield doc, True
                emitted = False
        keep = len(separator) - 1 if separator else 0  # a separator may straddle the next chunk
        while len(buf) - keep > piece_chars:
            cut = _safe_cut(buf, piece_chars)
            if cut == 0:  # none up to the limit: take the first one after it, if any
                match = _SAFE_CUT.search(buf, piece_chars, len(buf) - keep)
                if match:
                    cut = match.start()
                elif len(buf) - keep < 8 * piece_chars:
                    break  # read more; a safe point may come
                else:
                    cut = piece_chars  # no safe point in 8 pieces of text: cut anyway (documented)
            yield buf[:cut], False
            buf = buf[cut:]
            emitted = True
    if emitted or buf.strip():
        yield buf, True


def _read_chunks(fh: io.TextIOBase, path: Path) -> Iterator[str]:
    try:
        while chunk := fh.read(READ_CHARS):
            yield chunk
    except UnicodeDecodeError as exc:
        raise NoisyLMError(f"{path} is not valid UTF-8 ({exc.reason}); convert it to UTF-8 first") from None
    except (OSError, EOFError) as exc:  # e.g. a truncated or corrupt .gz
        raise NoisyLMError(f"cannot read {path} ({exc}); check the file") from None


def _jsonl_texts(fh: io.TextIOBase, path: Path, text_field: str) -> Iterator[str]:
    try:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NoisyLMError(
                    f"{path}:{lineno} is not valid JSON ({exc.msg}); fix the line or remove it"
                ) from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise NoisyLMError(
                    f"{path}:{lineno} has no string field {text_field!r}; "
                    "name the field holding the text with --text-field"
                )
            yield text
    except UnicodeDecodeError as exc:
        raise NoisyLMError(f"{path} is not valid UTF-8 ({exc.reason}); convert it to UTF-8 first") from None
    except (OSError, EOFError) as exc:
        raise NoisyLMError(f"cannot read {path} ({exc}); check the file") from None


def iter_pieces(
    files: Iterable[Path],
    *,
    doc_separator: str | None = None,
    text_field: str = "text",
    piece_chars: int | None = None,
) -> Iterator[Piece]:
    """Stream the documents of ``files`` (already resolved) as pieces of about ``piece_chars``
    characters at most (default `PIECE_CHARS`), in order."""
    piece_chars = piece_chars or PIECE_CHARS
    for index, path in enumerate(files):
        with _open_text(path) as fh:
            if is_jsonl(path):
                for text in _jsonl_texts(fh, path, text_field):
                    for piece, ends in split_pieces([text], doc_separator, piece_chars):
                        yield Piece(piece, ends, index)
            else:
                for piece, ends in split_pieces(_read_chunks(fh, path), doc_separator, piece_chars):
                    yield Piece(piece, ends, index)


def iter_documents(
    inputs: Iterable[str | os.PathLike], *, doc_separator: str | None = None, text_field: str = "text"
) -> Iterator[str]:
    """Whole documents of files/folders (convenience for small corpora; `prepare` streams pieces)."""
    parts: list[str] = []
    for piece in iter_pieces(resolve_inputs(inputs), doc_separator=doc_separator, text_field=text_field):
        parts.append(piece.text)
        if piece.ends_document:
            yield "".join(parts)
            parts = []
