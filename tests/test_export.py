"""export_hf: the exported folder loads in transformers' GPT2LMHeadModel with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from noisylm.cli import main
from noisylm.errors import NoisyLMError
from noisylm.model import GPT, preset
from noisylm.training import checkpoint as ckpt
from noisylm.training.export import export_hf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _gpt2_checkpoint(tmp_path, bias=True):
    """A GPT-2-vocabulary checkpoint (random weights are enough to compare two implementations)."""
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=50257, bias=bias))
    with torch.no_grad():  # non-trivial LayerNorm/bias values
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95))
    state = {"model": model.config.to_dict(), "data": {"tokenizer": "gpt2"}, "iter": 0}
    ckpt.save_checkpoint(tmp_path / "run" / "checkpoints", 1, model, optimizer, state, [])
    return model.eval(), tmp_path / "run"


@pytest.mark.parametrize("bias", [True, False])
def test_hf_model_has_the_same_logits(tmp_path, bias):
    model, run = _gpt2_checkpoint(tmp_path, bias)
    out = export_hf(run, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.vocab_size == 50257 and hf.config.n_positions == 64
    idx = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model.logits(idx), atol=1e-4, rtol=1e-4)
    if bias:  # the GPT-2 tokenizer files come along: ids equal noisylm's tokenizer
        from noisylm.data.tokenizers import get_tokenizer

        tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        text = "Hello world, it's noisy"
        assert tokenizer(text)["input_ids"] == get_tokenizer("gpt2").encode(text)


def test_export_cli_and_refuses_existing_output(tmp_path, capsys):
    _, run = _gpt2_checkpoint(tmp_path)
    (tmp_path / "hf").mkdir()
    with pytest.raises(NoisyLMError, match="--overwrite"):
        export_hf(run, tmp_path / "hf")
    assert main(["export", str(run), "--hf", str(tmp_path / "hf"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == "gelu"
    assert main(["export", str(tmp_path / "missing"), "--hf", str(tmp_path / "hf2")]) == 1
    assert "not found" in capsys.readouterr().err
