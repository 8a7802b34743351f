"""`noisylm scan` end to end (`noisylm.scan.pipeline`): detection against the true spans of `noisylm inject`,
the artifacts, the Prop. 1 prediction against the paper's closed forms, --filter, --reference, the CLI,
and every bad input the issue names. The modules' own tests are tests/test_scan_<module>.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from noisylm.cli import main
from noisylm.data.shards import MANIFEST, ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.scan import pipeline as S
from noisylm.scan.config import ScanConfig
from scan_helpers import prop1_by_hand, span_mask


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


def test_prediction_follows_proposition1(scanned, noisy_bytes):
    pred = scanned[0]["prediction"]
    assert pred["noise_loss"] > pred["clean_loss"]  # noise is less predictable than text
    # the losses: the add-one unigram model of the unflagged tokens, on the unflagged and the flagged tokens
    train = np.asarray(ShardSet.open(noisy_bytes).tokens("train"))
    flagged = span_mask(np.asarray(scanned[0]["spans"]), len(train))
    q = (np.bincount(train[~flagged], minlength=257) + 1.0) / ((~flagged).sum() + 257)
    assert pred["clean_loss"] == pytest.approx(-np.log(q[train[~flagged]]).mean(), rel=1e-9)
    assert pred["noise_loss"] == pytest.approx(-np.log(q[train[flagged]]).mean(), rel=1e-9)
    p_c, p_n = np.exp(-pred["clean_loss"]), np.exp(-pred["noise_loss"])
    for row in pred["grid"]:
        hand = prop1_by_hand(pred["alpha_hat"], row["k"], p_c, p_n)
        assert row["statement"] == hand["statement"] and row["eta"] == pytest.approx(hand["eta"])
        assert row["increase_optimum_nats"] == pytest.approx(hand["increase_optimum"])
        assert row["increase_bound_nats"] == pytest.approx(hand["increase_bound"], rel=1e-6)
    # η = α p_c − (1 − α) k p_n decreases with k: more k, less harm
    etas = [row["eta"] for row in pred["grid"]]
    assert etas == sorted(etas, reverse=True)


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
    expected = source[~span_mask(spans, len(source))]
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
    assert S.default_out("data/owt") == Path("data/owt-scan")  # where the report goes without --out


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
    bad_manifest = json.loads((bad_ids / MANIFEST).read_text())
    bad_manifest["splits"]["train"]["sha256"] = None  # else the hash check on reading catches it first
    (bad_ids / MANIFEST).write_text(json.dumps(bad_manifest))
    code, err = _cli_error([str(bad_ids), "--out", str(tmp_path / "o2b")], capsys)
    assert code == 1 and "token id 300, but ids >= vocab size 257" in err and not (tmp_path / "o2b").exists()

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
        ScanConfig(detector="model")


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
