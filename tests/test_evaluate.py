"""evaluate_checkpoint and `noisylm eval`: losses against a brute-force full-logits reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisylm.cli import main
from noisylm.data.shards import ShardSet
from noisylm.errors import NoisyLMError, UsageError
from noisylm.training import evaluate_checkpoint
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
