"""Per-token losses of a checkpoint (`token_losses`, `stream_token_losses`, `load_eval_model`),
`evaluate_checkpoint` and `noisylm eval`: against a brute-force full-logits reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisylm.cli import main
from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.model import GPT, preset
from noisylm.training import evaluate_checkpoint, load_eval_model, stream_token_losses, token_losses
from noisylm.training.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def brute_force_losses(model, tokens: np.ndarray) -> np.ndarray:
    """-log p(t[i+1] | window context) with full logits, one window of block_size at a time."""
    block, out = model.config.block_size, []
    for s in range(0, len(tokens) - 1, block):
        chunk = torch.from_numpy(np.asarray(tokens[s : s + block + 1]).astype(np.int64))[None]
        logits = model.logits(chunk[:, :-1])
        out.append(F.cross_entropy(logits[0], chunk[0, 1:], reduction="none").detach().numpy())
    return np.concatenate(out)


def window_losses_brute_force(model, rows: np.ndarray) -> np.ndarray:
    """Cross-entropy of full logits, float64, for each (window, position) of ``rows`` (windows of T + 1)."""
    x = torch.from_numpy(rows.astype(np.int64))
    with torch.no_grad():
        logits = model.logits(x[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).double(), x[:, 1:].reshape(-1), reduction="none")
    return ce.view(len(rows), -1).numpy()


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return GPT(preset("tiny", vocab_size=257, block_size=16)).eval()


def test_token_losses_match_cross_entropy_of_logits(random_model):
    tokens = np.random.default_rng(0).integers(0, 257, size=400).astype(np.uint16)
    starts = np.array([0, 5, 100, 383])
    got = token_losses(random_model, tokens, starts, batch_size=3)
    reference = window_losses_brute_force(random_model, np.stack([tokens[s : s + 17] for s in starts]))
    assert got.shape == (4, 16) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    shorter = token_losses(random_model, tokens, [7, 50], length=5, batch_size=1)
    reference = window_losses_brute_force(random_model, np.stack([tokens[s : s + 6] for s in (7, 50)]))
    np.testing.assert_allclose(shorter, reference, rtol=1e-4, atol=1e-5)


def test_token_losses_wrap_around_the_end(random_model):
    tokens = np.random.default_rng(1).integers(0, 257, size=40).astype(np.uint16)
    got = token_losses(random_model, tokens, [30], wrap=True)  # tokens 30..39, then 0..6
    rows = np.concatenate([tokens[30:], tokens[:7]])[None]
    np.testing.assert_allclose(got, window_losses_brute_force(random_model, rows), rtol=1e-4, atol=1e-5)


def test_stream_token_losses_predict_every_token_once(random_model):
    tokens = np.random.default_rng(2).integers(0, 257, size=100).astype(np.uint16)
    for length, batch in ((16, 2), (7, 3), (11, 20)):
        got = stream_token_losses(random_model, tokens, length=length, batch_size=batch)
        # consecutive windows s = 0, length, 2·length, ...: token i + 1 is predicted from tokens s..i
        expected = np.concatenate(
            [
                window_losses_brute_force(random_model, tokens[s : s + length + 1][None])[0]
                for s in range(0, 99, length)
            ]
        )
        assert got.shape == (99,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    out = np.full(100, -1.0, dtype=np.float32)
    stream_token_losses(random_model, tokens, batch_size=4, out=out[1:])
    assert out[0] == -1.0 and np.array_equal(out[1:], stream_token_losses(random_model, tokens, batch_size=4))


def test_load_eval_model(tiny_run):
    loaded = load_eval_model(tiny_run, device="cpu")
    assert not loaded.model.training and loaded.device == torch.device("cpu")
    assert loaded.path.name == "ckpt-0000030" and loaded.state["iter"] == 30
    reference, _, _ = load_model(tiny_run)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    with pytest.raises(UsageError, match="dtype 'float8'"):
        load_eval_model(tiny_run, device="cpu", dtype="float8")
    with pytest.raises(UsageError, match="float16 needs a GPU"):
        load_eval_model(tiny_run, device="cpu", dtype="float16")


def test_losses_and_per_token_file_match_brute_force(
    tiny_run, shakespeare_bytes, python_docs_bytes, tmp_path
):
    out = tmp_path / "losses.npz"
    sets = {"val": shakespeare_bytes, "docs": python_docs_bytes}
    result = evaluate_checkpoint(
        tiny_run, sets, max_tokens=1000, batch_size=3, per_token_path=out, device="cpu"
    )
    assert result["iter"] == 30 and result["checkpoint"].endswith("ckpt-0000030")
    model, _, _ = load_model(tiny_run)
    model.eval()
    saved = np.load(out)
    for name, directory in sets.items():
        tokens = ShardSet.open(directory).tokens("val")[:1000]
        reference = brute_force_losses(model, tokens)
        assert saved[name].shape == (999,) and result["eval"][name]["tokens"] == 999
        np.testing.assert_allclose(saved[name], reference, rtol=1e-4, atol=1e-5)
        assert result["eval"][name]["loss"] == pytest.approx(reference.mean(), rel=1e-5)


def test_noise_split_and_cli(tiny_run, noisy_bytes, tmp_path, capsys):
    code = main(
        ["eval", str(tiny_run), "--on", f"noise={noisy_bytes}", "--split", "noise", "--max-tokens", "500"]
    )
    assert code == 0
    assert "noise: loss" in capsys.readouterr().out
    assert main(["eval", str(tiny_run), "--on", f"n={noisy_bytes}", "--max-tokens", "300", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["eval"]["n"]["tokens"] == 299


def test_bad_eval_input(tiny_run, shakespeare_gpt2, shakespeare_bytes, tmp_path, capsys):
    with pytest.raises(NoisyLMError, match="tokenizer 'gpt2'.*prepare it with the model's tokenizer"):
        evaluate_checkpoint(tiny_run, {"g": shakespeare_gpt2})
    with pytest.raises(UsageError, match="no eval sets"):
        evaluate_checkpoint(tiny_run, {})
    with pytest.raises(NoisyLMError, match="has no split 'test'"):
        evaluate_checkpoint(tiny_run, {"v": shakespeare_bytes}, split="test")
    existing = tmp_path / "x.npz"
    existing.write_bytes(b"keep")
    with pytest.raises(NoisyLMError, match="--overwrite"):
        evaluate_checkpoint(tiny_run, {"v": shakespeare_bytes}, per_token_path=existing)
    assert existing.read_bytes() == b"keep"
    assert main(["eval", str(tmp_path / "no-run"), "--on", f"v={shakespeare_bytes}"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--on", "=x"]) == 2
