"""sample() and `noisylm sample`: seeded, greedy equals argmax decoding, prompt kept."""

from __future__ import annotations

import pytest
import torch

from noisylm.cli import main
from noisylm.data.tokenizers import get_tokenizer
from noisylm.errors import UsageError
from noisylm.training.checkpoint import load_model
from noisylm.training.sampling import sample

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_sampling_is_seeded_and_keeps_the_prompt(tiny_run):
    a = sample(tiny_run, prompt="ROMEO:", num_samples=2, max_new_tokens=20, seed=3, device="cpu")
    b = sample(tiny_run, prompt="ROMEO:", num_samples=2, max_new_tokens=20, seed=3, device="cpu")
    assert a == b and all(text.startswith("ROMEO:") for text in a)
    assert sample(tiny_run, prompt="ROMEO:", max_new_tokens=20, seed=4, device="cpu")[0] != a[0]


def test_greedy_is_argmax_decoding(tiny_run):
    text = sample(tiny_run, prompt="KING", max_new_tokens=40, temperature=0, device="cpu")[0]
    model, _, _ = load_model(tiny_run)
    model.eval()
    tok = get_tokenizer("bytes")
    ids = torch.tensor([tok.encode("KING")])
    for _ in range(40):
        next_id = model.logits(ids[:, -model.config.block_size :])[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    assert text == tok.decode(ids[0].tolist())
    assert sample(tiny_run, prompt="KING", max_new_tokens=40, top_k=1, device="cpu")[0] == text


def test_bad_sampling_arguments(tiny_run, capsys):
    with pytest.raises(UsageError, match="temperature"):
        sample(tiny_run, temperature=-1)
    assert main(["sample", str(tiny_run), "--top-k", "-3"]) == 2
    assert main(["sample", str(tiny_run), "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()
