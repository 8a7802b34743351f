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


@pytest.mark.parametrize(
    "args, code, error",
    [
        (["--top-k", "-3"], 2, "top_k must be >= 1, got -3"),
        (["--temperature", "-1"], 2, "temperature must be >= 0 (0 = greedy), got -1.0"),
        (["--num-samples", "0"], 2, "num_samples must be >= 1 and max_new_tokens >= 0"),
        (["--max-new-tokens", "-1"], 2, "num_samples must be >= 1 and max_new_tokens >= 0"),
        (["--device", "tpu"], 2, None),  # the device resolver's own message
    ],
)
def test_bad_sampling_arguments_one_line_and_nothing_written(tiny_run, capsys, tmp_path, monkeypatch, args,
                                                             code, error):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show up here
    before = sorted((p.relative_to(tiny_run), p.stat().st_mtime_ns) for p in tiny_run.rglob("*"))
    assert main(["sample", str(tiny_run), *args]) == code
    captured = capsys.readouterr()
    assert captured.out == ""  # no sample, not even a partial one
    assert captured.err.count("\n") == 1 and captured.err.startswith("noisylm sample: error: ")
    if error is not None:
        assert captured.err == f"noisylm sample: error: {error}\n"
    assert list(tmp_path.iterdir()) == []
    assert sorted((p.relative_to(tiny_run), p.stat().st_mtime_ns) for p in tiny_run.rglob("*")) == before


def test_sampling_python_arguments_and_the_cli_prints_each_sample(tiny_run, capsys):
    with pytest.raises(UsageError, match="temperature must be >= 0"):
        sample(tiny_run, temperature=-1)
    assert (
        main(["sample", str(tiny_run), "--max-new-tokens", "5", "--num-samples", "2", "--device", "cpu"]) == 0
    )
    expected = sample(tiny_run, max_new_tokens=5, num_samples=2, device="cpu")  # same default seed
    out = capsys.readouterr().out
    assert out == f"--- sample 1 ---\n{expected[0]}\n--- sample 2 ---\n{expected[1]}\n"
