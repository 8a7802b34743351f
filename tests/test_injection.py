"""`inject`: α within one token, exact spans, noise.bin, untouched validation, determinism, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from noisylm.cli import main
from noisylm.data.injection import inject, noise_vocab
from noisylm.data.shards import ShardSet, verify
from noisylm.errors import UsageError


def _remove_spans(tokens: np.ndarray, spans: np.ndarray) -> np.ndarray:
    keep = np.ones(len(tokens), dtype=bool)
    for offset, length in spans:
        keep[offset : offset + length] = False
    return np.asarray(tokens)[keep]


def test_append_matches_the_paper(noisy_bytes, shakespeare_bytes):
    clean, noisy = ShardSet.open(shakespeare_bytes), ShardSet.open(noisy_bytes)
    C = clean.splits["train"].tokens
    record = noisy.noise
    N = record["noise_tokens"]
    assert abs(N - 0.2 * (C + N)) <= 1 and record["alpha_achieved"] == N / (C + N)
    assert record["kind"] == "uniform" and record["placement"] == "append" and record["seed"] == 0
    assert record["params"]["vocab_range"] == [0, 256]
    assert noisy.noise_spans().tolist() == [[C, N]]
    train = np.memmap(noisy_bytes / "train.bin", dtype=np.uint16, mode="r")  # nanoGPT's reader
    assert np.array_equal(train[:C], clean.tokens("train")) and train[C:].max() < 256
    assert np.array_equal(train[C:], noisy.tokens("noise"))
    assert (noisy_bytes / "val.bin").read_bytes() == (shakespeare_bytes / "val.bin").read_bytes()
    assert record["parent"]["train_sha256"] == clean.splits["train"].sha256
    assert verify(noisy_bytes) == []


@pytest.mark.parametrize("alpha", [0.0, 1e-5, 0.01, 0.05, 0.2, 0.5, 0.9])
def test_achieved_alpha_within_one_token(tmp_path, python_docs_bytes, alpha):
    shards = inject(python_docs_bytes, tmp_path / "n", alpha=alpha, seed=1, progress=False)
    C, N = shards.noise["clean_tokens"], shards.noise["noise_tokens"]
    assert abs(N - alpha * (C + N)) <= 1
    assert shards.splits["train"].tokens == C + N and shards.splits["noise"].tokens == N
    assert shards.noise["alpha_requested"] == alpha


def test_interleave_records_exact_spans_at_document_boundaries(tmp_path, python_docs_bytes):
    clean = ShardSet.open(python_docs_bytes)
    shards = inject(
        python_docs_bytes,
        tmp_path / "i",
        alpha=0.3,
        kind="boosted",
        placement="interleave",
        seed=3,
        doc_median=64,
        progress=False,
    )
    spans = shards.noise_spans()
    train = np.asarray(shards.tokens("train"))
    assert len(spans) > 5 and (np.diff(spans[:, 0]) > 0).all()
    assert (spans[1:, 0] > spans[:-1, 0] + spans[:-1, 1]).all()  # sorted, disjoint, not adjacent (merged)
    # removing the spans gives back the clean split byte for byte; noise.bin is the spans in order
    assert np.array_equal(_remove_spans(train, spans), clean.tokens("train"))
    assert np.array_equal(np.concatenate([train[o : o + n] for o, n in spans]), shards.tokens("noise"))
    # every span starts a document: at 0 or right after an end-of-text id
    assert all(o == 0 or train[o - 1] == 256 for o, _ in spans)
    assert shards.noise["spans"] == spans.tolist()
    # number of noise documents ~ N / E[length], log-normal median 64, sigma 1: mean 64 e^0.5
    N = shards.noise["noise_tokens"]
    assert 0.8 < shards.noise["noise_documents"] / (N / (64 * np.exp(0.5))) < 1.25
    assert shards.noise["placement_params"] == {
        "doc_median": 64,
        "doc_sigma": 1.0,
        "distribution": "lognormal",
    }
    assert verify(shards.path) == []


def _content_record(manifest: dict) -> dict:
    """A manifest without what differs between identical runs: provenance and the files' mtimes."""
    splits = {
        name: {k: v for k, v in info.items() if k != "mtime_ns"} for name, info in manifest["splits"].items()
    }
    return {**{k: v for k, v in manifest.items() if k != "provenance"}, "splits": splits}


@pytest.mark.parametrize("kind", ["uniform", "boosted", "gaussian", "mojibake", "histogram", "corpus"])
@pytest.mark.parametrize("placement", ["append", "interleave"])
def test_every_kind_and_placement_is_deterministic_and_verifies(
    tmp_path, shakespeare_bytes, python_docs_bytes, kind, placement
):
    params = {}
    if kind == "histogram":
        np.save(tmp_path / "h.npy", np.arange(256, dtype=np.float64))
        params["histogram"] = str(tmp_path / "h.npy")
    if kind == "corpus":
        params["source"] = str(python_docs_bytes)
    runs = [
        inject(
            shakespeare_bytes,
            tmp_path / name,
            alpha=0.1,
            kind=kind,
            seed=seed,
            placement=placement,
            params=params,
            progress=False,
        )
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    a, b, c = runs
    for file in ("train.bin", "val.bin", "noise.bin"):
        assert (a.path / file).read_bytes() == (b.path / file).read_bytes()
    assert (a.path / "noise.bin").read_bytes() != (c.path / "noise.bin").read_bytes()
    assert _content_record(a.manifest) == _content_record(b.manifest)
    assert verify(a.path) == []


def test_corpus_kind_mixes_in_the_second_domain(tmp_path, shakespeare_bytes, python_docs_bytes):
    source = ShardSet.open(python_docs_bytes)
    mixed = inject(
        shakespeare_bytes,
        tmp_path / "mix",
        alpha=0.5,
        kind="corpus",
        source=str(python_docs_bytes),
        progress=False,
    )
    noise = np.asarray(mixed.tokens("noise"))
    src = np.asarray(source.tokens("train"))
    start = mixed.noise["params"]["start"]
    assert np.array_equal(noise, np.roll(src, -start)[np.arange(len(noise)) % len(src)])
    assert mixed.noise["params"]["passes"] == pytest.approx(len(noise) / len(src), abs=1e-6)
    # documents: the clean ones plus the python-docs documents that came in with the noise
    eots = int((np.asarray(mixed.tokens("train")) == 256).sum())
    assert mixed.splits["train"].documents == eots
    assert verify(mixed.path) == []


def test_gpt2_noise_range_is_the_papers(shakespeare_gpt2, tmp_path):
    shards = inject(shakespeare_gpt2, tmp_path / "g", alpha=0.2, kind="uniform", progress=False)
    assert noise_vocab(shards) == 50256 and shards.noise["params"]["vocab_range"] == [0, 50256]
    noise = np.asarray(shards.tokens("noise"))
    assert noise.max() < 50256 and noise.min() >= 0
    gauss = inject(shakespeare_gpt2, tmp_path / "gg", alpha=0.2, kind="gaussian", progress=False)
    assert (gauss.noise["params"]["mean"], gauss.noise["params"]["std"]) == (25128, 500)


def test_keyword_parameters_go_to_the_noise_kind(tmp_path, shakespeare_bytes):
    shards = inject(shakespeare_bytes, tmp_path / "g", alpha=0.05, kind="gaussian", sd=10, progress=False)
    assert shards.noise["params"]["std"] == 10


def test_manifest_keeps_spans_compact(tmp_path, python_docs_bytes):
    shards = inject(
        python_docs_bytes, tmp_path / "i", alpha=0.2, placement="interleave", doc_median=16, progress=False
    )
    text = (shards.path / "manifest.json").read_text()
    spans_lines = [line for line in text.splitlines() if '"spans"' in line]
    assert len(shards.noise_spans()) > 5 and len(spans_lines) == 1  # one line, however many spans
    assert spans_lines[0].strip().startswith('"spans": [[')
    assert json.loads(text)["noise"]["spans"] == shards.noise_spans().tolist()


# ---------------------------------------------------------------------------- bad input


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--alpha", "1.0"], 2, r"--alpha 1.0 is outside \[0, 1\)"),
        (["--alpha", "-0.1"], 2, r"--alpha -0.1 is outside"),
        (["--alpha", "0.1", "--kind", "pink"], 2, "unknown noise kind 'pink'"),
        (["--alpha", "0.1", "--placement", "middle"], 2, "unknown placement 'middle'"),
        (["--alpha", "0.1", "--kind", "histogram"], 2, "needs a histogram file"),
        (["--alpha", "0.1", "--kind", "corpus"], 2, "needs a prepared shard set"),
        (["--alpha", "0.1", "--param", "nokey"], 2, "must look like KEY=VALUE"),
        (["--alpha", "0.1", "--kind", "gaussian", "--param", "stdev=3"], 2, "unknown parameter"),
    ],
)
def test_inject_bad_arguments(tmp_path, capsys, shakespeare_bytes, extra, code, message):
    rc, err = _cli(
        capsys, "inject", str(shakespeare_bytes), "--out", str(tmp_path / "out"), "--quiet", *extra
    )
    assert rc == code and err.count("\n") == 1 and err.startswith("noisylm inject: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_inject_bad_sources(tmp_path, capsys, shakespeare_bytes, shakespeare_gpt2, noisy_bytes):
    out = str(tmp_path / "out")
    cases = [
        ([str(tmp_path / "nothing"), "--alpha", "0.1"], 1, "not found"),
        ([str(noisy_bytes), "--alpha", "0.1"], 2, "already holds injected noise"),
        (
            [str(shakespeare_bytes), "--alpha", "0.1", "--kind", "corpus", "--source", str(shakespeare_gpt2)],
            2,
            "same tokenizer",
        ),
        ([str(shakespeare_bytes), "--alpha", "0.1", "--out", str(shakespeare_bytes)], 1, "already exists"),
    ]
    for args, code, message in cases:
        rc, err = (
            _cli(capsys, "inject", *args, "--out", out, "--quiet")
            if "--out" not in args
            else _cli(capsys, "inject", *args, "--quiet")
        )
        assert rc == code and err.count("\n") == 1 and message in err, err
        assert not Path(out).exists()


def test_inject_write_failure_leaves_nothing(tmp_path, capsys, shakespeare_bytes, monkeypatch):
    import noisylm.data.injection as inj

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inj.shutil, "copyfile", broken)
    rc, err = _cli(
        capsys, "inject", str(shakespeare_bytes), "--alpha", "0.1", "--out", str(tmp_path / "o"), "--quiet"
    )
    assert rc == 1 and "No space left on device" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_inject_cli_and_overwrite(tmp_path, capsys, shakespeare_bytes):
    out = tmp_path / "o"
    args = [
        "inject",
        str(shakespeare_bytes),
        "--alpha",
        "0.05",
        "--kind",
        "boosted",
        "--placement",
        "interleave",
        "--param",
        "num_boosted=4",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "boosted noise, interleave" in printed and "achieved 0.05" in printed
    assert ShardSet.open(out).noise["params"]["num_boosted"] == 4
    assert main(args) == 1
    assert main([*args, "--overwrite", "--seed", "3"]) == 0
    assert ShardSet.open(out).noise["seed"] == 3


def test_config_validation_in_python():
    from noisylm.data.injection import InjectConfig

    with pytest.raises(UsageError):
        InjectConfig(alpha=0.1, doc_median=0)
    assert InjectConfig(alpha=0.0).placement == "append"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_inject_leaves_a_build_folder_that_the_next_run_removes(tmp_path, shakespeare_bytes, capsys):
    parent = tmp_path / "data"
    out = parent / "noisy"
    args = ["inject", str(shakespeare_bytes), "--alpha", "0.2", "--out", str(out), "--quiet"]
    marker = tmp_path / "paused"
    # a real `noisylm inject`, stopped by its test hook after the first noise chunk (not a race)
    env = {**os.environ, "NOISYLM_TEST_PAUSE": f"inject.write:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "noisylm", *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # only a guard against a hang, not a timing assertion
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.kill() or proc.stderr.read().decode()
    (build,) = parent.iterdir()
    assert build.name.startswith(".noisy.tmp-") and (build / "noise.bin").stat().st_size > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert list(parent.iterdir()) == [build]  # SIGKILL: nothing could clean up

    assert main(args) == 0  # the next run for the same --out
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed 1 stale build folder(s)" in err and build.name in err
    assert [p.name for p in parent.iterdir()] == ["noisy"]
    assert verify(out) == []
