"""The model detector (`noisylm.scan.model_detector`): per-token losses against full-logits cross-entropy,
the threshold and spans on known losses, and a trained model on injected noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisylm.data.shards import ShardSet
from noisylm.model import GPT, preset
from noisylm.scan import model_detector as MD
from noisylm.scan.config import ScanConfig
from noisylm.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _checkpoint(root, model):
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(root / "checkpoints", 0, model, optimizer, {"model": model.config.to_dict()}, [])


def test_model_token_losses_brute_force(tmp_path):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=257, block_size=16)).eval()
    ckpt = _checkpoint(tmp_path / "run", model)
    tokens = np.random.default_rng(0).integers(0, 257, size=90).astype(np.uint16)
    for context, batch in ((None, 3), (10, 2)):
        config = ScanConfig(model=str(ckpt), model_context=context, model_batch=batch)
        losses = MD.model_token_losses(tokens, config, 257, "bytes", progress=False)
        length = context or 16
        expected = [0.0]  # the first token has no context
        for s in range(0, 89, length):  # consecutive windows, each its own context
            x = torch.from_numpy(tokens[s : s + length + 1].astype(np.int64))[None]
            with torch.no_grad():
                expected += F.cross_entropy(model.logits(x[:, :-1])[0], x[0, 1:], reduction="none").tolist()
        assert losses.shape == (90,) and losses.dtype == np.float32
        np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-5)


def test_detect_model_on_known_losses():
    n, vocab = 4000, 257
    losses = np.full(n, 2.0, dtype=np.float32)
    losses[1000:1500] = math.log(vocab)  # a noise span: loss ≈ log V
    losses[0] = 0.0
    detection = MD.detect_model(np.zeros(n, np.uint16), losses, vocab, ScanConfig(model="x"))
    assert detection.spans.tolist() == [[1000, 500]]
    # the threshold is halfway between the median window loss and log V
    assert detection.threshold == pytest.approx(0.5 * (2.0 + math.log(vocab)), rel=1e-6)
    assert detection.details["log_vocab"] == pytest.approx(math.log(vocab))


def test_model_detector_with_a_trained_model(shakespeare_bytes, tmp_path):
    from noisylm.data.corpora import bundled_corpora
    from noisylm.data.injection import inject
    from noisylm.data.preparation import prepare
    from noisylm.scan import scan

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
    report = scan(tmp_path / "noisy", tmp_path / "m", model=str(tmp_path / "run"), progress=False)
    assert report["detector"]["detector"] == "model"
    assert report["truth"]["f1"] >= 0.95 and report["truth"]["alpha_rel_error"] <= 0.10
    assert report["threshold"] < math.log(257)
    pred = report["prediction"]
    assert pred["noise_loss"] > math.log(257) - 1.0 > pred["clean_loss"]  # noise near log V, text far below
