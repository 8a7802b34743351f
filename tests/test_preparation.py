"""`prepare` / `merge`: ids equal tiktoken's, nanoGPT reads the shards, streaming, sharding, bad input."""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from noisylm.cli import main
from noisylm.data.corpora import bundled_corpora
from noisylm.data.preparation import _is_val, merge, prepare
from noisylm.data.shards import ShardSet, verify
from noisylm.errors import NoisyLMError, UsageError


def _plays(n: int = 4) -> list[Path]:
    return sorted(bundled_corpora()["shakespeare"].iterdir())[:n]


def _text(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode("utf-8")


def _docs(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eot)
    return np.split(np.asarray(tokens), ends + 1)[:-1]


def test_gpt2_ids_equal_tiktoken_and_nanogpt_reads_them(shakespeare_gpt2, tiktoken_gpt2):
    shards = ShardSet.open(shakespeare_gpt2)
    manifest = json.loads((shakespeare_gpt2 / "manifest.json").read_text())
    assert (manifest["tokenizer"], manifest["vocab_size"], manifest["eot_id"], manifest["dtype"]) == (
        "gpt2",
        50257,
        50256,
        "uint16",
    )
    # nanoGPT's reader, unchanged
    train = np.memmap(shakespeare_gpt2 / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(shakespeare_gpt2 / "val.bin", dtype=np.uint16, mode="r")
    assert (
        len(train) == manifest["splits"]["train"]["tokens"]
        and len(val) == manifest["splits"]["val"]["tokens"]
    )
    expected = [
        np.array(tiktoken_gpt2.encode_ordinary(_text(p)) + [50256], dtype=np.uint16) for p in _plays()
    ]
    got = _docs(train, 50256) + _docs(val, 50256)
    assert sorted(map(len, got)) == sorted(map(len, expected))
    assert {d.tobytes() for d in got} == {e.tobytes() for e in expected}
    assert shards.splits["train"].documents == 3 and shards.splits["val"].documents == 1
    assert verify(shakespeare_gpt2) == []


def test_bytes_shards_are_the_utf8_bytes_in_order(shakespeare_bytes):
    shards = ShardSet.open(shakespeare_bytes)
    plays = [_text(p).encode("utf-8") for p in _plays()]
    val_docs = [i for i in range(4) if _is_val(i, 0.25, float(np.random.default_rng(0).random()))]
    assert len(val_docs) == 1
    train = b"".join(
        np.frombuffer(p, np.uint8).astype(np.uint16).tobytes() + b"\x00\x01"
        for i, p in enumerate(plays)
        if i not in val_docs
    )
    assert (shakespeare_bytes / "train.bin").read_bytes() == train
    assert shards.manifest["sources"][0]["documents"] == 1 and len(shards.manifest["sources"]) == 4
    assert shards.manifest["provenance"]["config"]["tokenizer"] == "bytes"


def test_validation_assignment_is_systematic_and_exact():
    for fraction in (0.05, 0.1, 0.25, 0.5):
        for offset in (0.0, 0.3, 0.99):
            picks = [_is_val(i, fraction, offset) for i in range(1000)]
            assert sum(picks) in (int(np.floor(1000 * fraction)), int(np.ceil(1000 * fraction)))
    assert not any(_is_val(i, 0.0, 0.5) for i in range(100))


def test_two_processes_give_identical_bytes_and_are_deterministic(tmp_path, monkeypatch):
    import noisylm.data.preparation as prep

    monkeypatch.setattr(prep, "BATCH_CHARS", 50_000)  # many batches in flight
    inputs = _plays(3)
    one = prepare(inputs, tmp_path / "one", tokenizer="gpt2", val_fraction=0.34, num_proc=1, progress=False)
    two = prepare(inputs, tmp_path / "two", tokenizer="gpt2", val_fraction=0.34, num_proc=2, progress=False)
    again = prepare(
        inputs, tmp_path / "again", tokenizer="gpt2", val_fraction=0.34, num_proc=2, progress=False
    )
    for split in ("train", "val"):
        a, b, c = ((s.path / f"{split}.bin").read_bytes() for s in (one, two, again))
        assert a == b == c
        assert one.splits[split].sha256 == two.splits[split].sha256


def test_inputs_jsonl_gz_folders_and_doc_separator(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    records = [{"text": f"record number {i} says hello"} for i in range(30)]
    with gzip.open(src / "part.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in records) + "\n")
    (src / "dump.txt").write_text("<|endoftext|>".join(f"dumped doc {i}" for i in range(10)))
    shards = prepare(
        [src],
        tmp_path / "out",
        tokenizer="bytes",
        val_fraction=0.1,
        doc_separator="<|endoftext|>",
        progress=False,
    )
    assert shards.splits["train"].documents + shards.splits["val"].documents == 40
    assert shards.splits["val"].documents == 4
    docs = {
        bytes(d[:-1].astype(np.uint8)).decode()
        for split in ("train", "val")
        for d in _docs(shards.tokens(split), 256)
    }
    assert docs == {r["text"] for r in records} | {f"dumped doc {i}" for i in range(10)}
    limited = prepare([src], tmp_path / "lim", tokenizer="bytes", max_documents=12, progress=False)
    assert limited.splits["train"].documents + limited.splits["val"].documents == 12


def test_shards_then_merge_hold_the_same_documents(tmp_path):
    inputs = sorted(bundled_corpora()["python-docs"].glob("tutorial/*.gz"))
    full = prepare(inputs, tmp_path / "full", tokenizer="bytes", val_fraction=0.2, progress=False)
    parts = [
        prepare(
            inputs,
            tmp_path / f"part{k}",
            tokenizer="bytes",
            val_fraction=0.2,
            num_shards=3,
            shard_index=k,
            progress=False,
        )
        for k in range(3)
    ]
    for split in ("train", "val"):
        assert sum(p.splits[split].documents for p in parts) == full.splits[split].documents
    merged = merge([p.path for p in parts], tmp_path / "merged")
    assert verify(merged.path) == []
    for split in ("train", "val"):
        got = sorted(d.tobytes() for d in _docs(merged.tokens(split), 256))
        want = sorted(d.tobytes() for d in _docs(full.tokens(split), 256))
        assert got == want
    assert [m["path"] for m in merged.manifest["merged_from"]] == [str(p.path) for p in parts]
    other = prepare(inputs[:2], tmp_path / "gpt2", tokenizer="gpt2", val_fraction=0.5, progress=False)
    with pytest.raises(NoisyLMError, match="same tokenizer"):
        merge([parts[0].path, other.path], tmp_path / "bad")


def test_bundled_corpus_by_name(tmp_path):
    shards = prepare(None, tmp_path / "pd", corpus="python-docs", tokenizer="bytes", progress=False)
    assert shards.splits["train"].documents + shards.splits["val"].documents == 53
    with pytest.raises(UsageError, match="either input paths or --corpus"):
        prepare([tmp_path], tmp_path / "x", corpus="shakespeare")


# ---------------------------------------------------------------------------- bad input


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.tmp-*"))


@pytest.mark.parametrize(
    "make_args, code, message",
    [
        (lambda p: [str(p / "nope.txt")], 1, "input .*nope.txt does not exist"),
        (lambda p: [str(p / "empty.txt")], 1, "no documents in .*empty.txt"),
        (lambda p: [str(p / "emptydir")], 1, "holds no text files"),
        (lambda p: [str(p / "one.txt"), "--tokenizer", "bpe"], 2, "unknown tokenizer 'bpe'"),
        (
            lambda p: [str(p / "one.txt"), "--val-fraction", "1.5"],
            2,
            r"--val-fraction 1.5 is outside \[0, 1\)",
        ),
        (lambda p: [str(p / "one.txt")], 1, "selects none for validation"),
        (lambda p: [str(p / "one.txt"), "--num-shards", "2", "--shard-index", "2"], 2, "--shard-index 2"),
        (lambda p: ["--corpus", "klingon"], 2, "unknown corpus 'klingon'"),
    ],
)
def test_prepare_bad_input_one_line_exit_code_no_output(tmp_path, capsys, make_args, code, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "one.txt").write_text("a single document")
    rc, err = _cli(capsys, "prepare", *make_args(tmp_path), "--out", str(tmp_path / "out"), "--quiet")
    assert rc == code
    assert err.count("\n") == 1 and err.startswith("noisylm prepare: error: ")
    assert __import__("re").search(message, err), err
    assert _no_leftovers(tmp_path, "out")


def test_prepare_refuses_existing_output_unless_overwrite(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("hello\n\nworld\n\nagain")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = [
        "prepare",
        str(tmp_path / "doc.txt"),
        "--out",
        str(out),
        "--tokenizer",
        "bytes",
        "--doc-separator",
        "\\n\\n",
        "--val-fraction",
        "0.4",
        "--quiet",
    ]
    rc, err = _cli(capsys, *args)
    assert rc == 1 and "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert (out / "keep.txt").read_text() == "precious"
    rc, _ = _cli(capsys, *args, "--overwrite")
    assert rc == 0 and not (out / "keep.txt").exists()
    assert ShardSet.open(out).splits["train"].documents + ShardSet.open(out).splits["val"].documents == 3


def test_prepare_write_failures_leave_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "doc.txt").write_text("text " * 100)
    (tmp_path / "afile").write_text("not a folder")
    rc, err = _cli(
        capsys,
        "prepare",
        str(tmp_path / "doc.txt"),
        "--out",
        str(tmp_path / "afile" / "out"),
        "--val-fraction",
        "0",
        "--quiet",
    )
    assert rc == 1 and "cannot create" in err and err.count("\n") == 1

    import noisylm.data.preparation as prep

    def disk_full(self, ids, documents):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep._SplitWriter, "write", disk_full)
    rc, err = _cli(
        capsys,
        "prepare",
        str(tmp_path / "doc.txt"),
        "--out",
        str(tmp_path / "out"),
        "--val-fraction",
        "0",
        "--quiet",
    )
    assert rc == 1 and "No space left on device" in err and err.count("\n") == 1
    assert _no_leftovers(tmp_path, "out")


def test_prepare_cli_summary(tmp_path, capsys):
    rc = main(
        [
            "prepare",
            "--corpus",
            "python-docs",
            "--tokenizer",
            "bytes",
            "--out",
            str(tmp_path / "pd"),
            "--quiet",
            "--num-proc",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "train" in out and "val" in out and str(tmp_path / "pd") in out
    assert verify(tmp_path / "pd") == []


def test_merge_cli_and_noisy_sets_are_refused(tmp_path, capsys, shakespeare_bytes, noisy_bytes):
    assert main(["merge", str(shakespeare_bytes), str(shakespeare_bytes), "--out", str(tmp_path / "m")]) == 0
    merged = ShardSet.open(tmp_path / "m")
    clean = ShardSet.open(shakespeare_bytes)
    assert merged.splits["train"].tokens == 2 * clean.splits["train"].tokens
    assert merged.splits["val"].documents == 2 * clean.splits["val"].documents
    capsys.readouterr()
    assert main(["merge", str(noisy_bytes), "--out", str(tmp_path / "n")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds injected noise" in err and not (tmp_path / "n").exists()


def test_streaming_a_long_document_in_small_pieces_keeps_tiktoken_ids(tmp_path, monkeypatch, tiktoken_gpt2):
    import noisylm.data.corpora as corpora
    import noisylm.data.preparation as prep

    monkeypatch.setattr(corpora, "PIECE_CHARS", 3000)  # a play becomes ~40 pieces
    monkeypatch.setattr(prep, "BATCH_CHARS", 20_000)  # and ~6 batches over 2 processes
    play = _plays(1)[0]
    shards = prepare([play], tmp_path / "s", tokenizer="gpt2", val_fraction=0.0, num_proc=2, progress=False)
    expected = tiktoken_gpt2.encode_ordinary(_text(play)) + [50256]
    assert np.asarray(shards.tokens("train")).tolist() == expected


def test_many_short_jsonl_documents_equal_tiktoken_per_document(tmp_path, monkeypatch, tiktoken_gpt2):
    """Web-style input: short JSONL documents, some that would tokenize differently if two ran
    together, one long enough to be streamed in pieces, one blank (skipped). 1 and 2 workers write the
    same bytes: each document's own tiktoken ids, then end-of-text, in input order."""
    import noisylm.data.corpora as corpora
    import noisylm.data.preparation as prep

    monkeypatch.setattr(corpora, "PIECE_CHARS", 2000)  # the play excerpt becomes several pieces
    monkeypatch.setattr(prep, "BATCH_CHARS", 3000)  # many small batches in flight
    play = _text(_plays(1)[0])
    docs = [play[i * 700 : (i + 1) * 700] for i in range(40)]  # cut mid-word and mid-line
    docs[3] = "ends in spaces and a newline   \n"
    docs[4] = "'s a contraction after it"
    docs[5] = "holds <|endoftext|> as plain text"
    docs[6] = "ends with <|endoftext"
    docs[7] = "|> and a lone \ud83d surrogate"
    docs[8] = play[:9000]
    docs[9] = " \n\t "  # whitespace only: not a document
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    kept = [d for d in docs if d.strip()]

    def run(name: str, procs: int, fraction: float) -> ShardSet:
        return prepare(
            [src], tmp_path / name, tokenizer="gpt2", val_fraction=fraction, num_proc=procs, progress=False
        )

    whole = run("all-1", 1, 0.0)
    expected = [i for d in kept for i in tiktoken_gpt2.encode_ordinary(d) + [50256]]
    assert np.asarray(whole.tokens("train")).tolist() == expected
    two_workers = run("all-2", 2, 0.0)
    assert (two_workers.path / "train.bin").read_bytes() == (whole.path / "train.bin").read_bytes()
    one, two = run("val-1", 1, 0.25), run("val-2", 2, 0.25)
    for split in ("train", "val"):
        assert (one.path / f"{split}.bin").read_bytes() == (two.path / f"{split}.bin").read_bytes()
    got = _docs(one.tokens("train"), 50256) + _docs(one.tokens("val"), 50256)
    assert sorted(d.tobytes() for d in got) == sorted(
        np.array(tiktoken_gpt2.encode_ordinary(d) + [50256], np.uint16).tobytes() for d in kept
    )


# ------------------------------------------------- commands killed outright (SIGKILL) and the next run


def _start_paused(args: list[str], marker: Path) -> subprocess.Popen:
    """A real `noisylm ...` process, stopped by its test hook at a known point mid-write (not a race)."""
    env = {**os.environ, "NOISYLM_TEST_PAUSE": f"prepare.write:{marker}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "noisylm", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300  # only a guard against a hang, not a timing assertion
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before the pause point: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("never reached the pause point")
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: no zombie left to look alive
    proc.stderr.close()


def _prepare_args(out: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        *map(str, _plays(2)),
        "--out",
        str(out),
        "--tokenizer",
        "bytes",
        "--val-fraction",
        "0.5",
        "--quiet",
        *extra,
    ]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's reaping is pending


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc")
def test_killed_prepare_leaves_no_worker_and_the_next_run_removes_its_build_folder(tmp_path, capsys):
    parent = tmp_path / "data"
    out = parent / "shk"
    proc = _start_paused(_prepare_args(out, "--num-proc", "2"), tmp_path / "paused")
    workers = _children(proc.pid)
    assert len(workers) >= 2 and all(_running(w) for w in workers)
    (build,) = parent.iterdir()  # mid-write: tokens written, no manifest yet
    assert build.name.startswith(".shk.tmp-") and (build / "train.bin").stat().st_size > 0
    assert not (build / "manifest.json").exists()

    _kill(proc)
    deadline = time.monotonic() + 60  # bounded wait; they normally go at once (parent-death signal)
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [w for w in workers if _running(w)]
    for pid in survivors:  # do not leak them into the rest of the test session
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
    assert list(parent.iterdir()) == [build]  # SIGKILL: nothing could clean up

    assert main(_prepare_args(out)) == 0  # the next run for the same --out
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed 1 stale build folder(s)" in err and build.name in err
    assert [p.name for p in parent.iterdir()] == ["shk"]
    assert verify(out) == []
