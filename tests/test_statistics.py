"""`stats` and the counting it uses (`ShardSet.token_counts`, `entropy_nats`): counts, priors and entropy
against brute force; the Fig. 8 PNG; the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from noisylm.cli import main
from noisylm.data.shards import ShardSet, entropy_nats
from noisylm.data.statistics import stats
from noisylm.errors import NoisyLMError


@pytest.fixture(scope="module")
def noisy_stats(noisy_bytes, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "st"
    return stats(noisy_bytes, out), out


def test_counts_and_priors_match_brute_force(noisy_bytes, noisy_stats):
    shards = ShardSet.open(noisy_bytes)
    result, _ = noisy_stats
    train = np.asarray(shards.tokens("train"))
    ((offset, length),) = shards.noise_spans().tolist()
    clean, noise = train[:offset], train[offset:]
    splits = result["splits"]
    assert list(splits) == ["train (clean)", "noise", "val"]
    assert splits["train (clean)"]["tokens"] == len(clean) and splits["noise"]["tokens"] == length
    assert splits["train (clean)"]["distinct_ids"] == len(np.unique(clean))
    p = np.bincount(clean) / len(clean)
    p = p[p > 0]
    assert abs(splits["train (clean)"]["entropy_nats"] - float(-(p * np.log(p)).sum())) < 1e-3
    top = splits["train (clean)"]["top"][0]
    assert top["id"] == int(np.bincount(clean).argmax()) == 32 and top["text"] == " "
    assert abs(splits["noise"]["entropy_nats"] - math.log(256)) < 0.01  # uniform over 256 ids
    assert splits["train (clean)"]["documents"] == shards.splits["train"].documents
    assert splits["noise"]["documents"] == 0  # uniform noise over [0, 256) holds no end-of-text id
    assert result["noise"]["kind"] == "uniform" and result["noise"]["spans"] == 1
    assert np.array_equal(shards.token_counts("noise"), np.bincount(noise, minlength=257))


def test_figure_table_and_json_are_written(noisy_stats, shakespeare_gpt2, tmp_path):
    result, out = noisy_stats
    image = imread(result["figure"])
    assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # three panels side by side
    table = (out / "stats.md").read_text()
    assert "entropy (nats)" in table and "| train (clean) |" in table
    assert "| noise |" in table and "α requested 0.2" in table
    saved = json.loads((out / "stats.json").read_text())
    assert saved["splits"]["noise"]["tokens"] == result["splits"]["noise"]["tokens"]
    assert saved["splits"]["noise"]["entropy_nats"] == result["splits"]["noise"]["entropy_nats"]
    assert "entropy_bits" not in saved["splits"]["noise"]
    clean = stats(shakespeare_gpt2, tmp_path / "gpt2")  # clean set: two panels, GPT-2 ids
    assert list(clean["splits"]) == ["train", "val"] and clean["noise"] is None
    assert clean["splits"]["train"]["top"][0]["text"] in ("\n", ",", " the")


def test_entropy_nats_reference():
    assert entropy_nats(np.array([1, 1, 1, 1])) == pytest.approx(math.log(4))
    assert entropy_nats(np.array([1, 3])) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert entropy_nats(np.array([5, 0, 0])) == 0.0
    assert entropy_nats(np.zeros(3, dtype=int)) == 0.0


def test_token_counts_in_chunks_and_corrupt_ids(noisy_bytes, tmp_path):
    import shutil

    shards = ShardSet.open(noisy_bytes)
    train = np.asarray(shards.tokens("train"))
    expected = np.bincount(train, minlength=257)
    for chunk in (1000, 4097, 1 << 24):  # chunk edges must not change the counts
        assert np.array_equal(shards.token_counts("train", chunk_tokens=chunk), expected)
    copy = tmp_path / "bad"
    shutil.copytree(noisy_bytes, copy)
    data = np.fromfile(copy / "train.bin", dtype=np.uint16)
    data[10] = 300
    data.tofile(copy / "train.bin")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["sha256"] = None  # else the hash check on reading catches it first
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NoisyLMError, match="token id 300, but ids >= vocab size 257.*noisylm verify"):
        ShardSet.open(copy).token_counts("train")


def test_stats_cli_default_out_and_bad_dir(noisy_bytes, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(noisy_bytes, copy)
    assert main(["stats", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "| noise |" in out and (copy / "stats" / "token_priors.png").is_file()
    assert main(["stats", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
