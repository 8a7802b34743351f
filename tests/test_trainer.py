"""train(): the run directory contract, exact resume after SIGKILL, DDP equivalence, bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from noisylm import runtime
from noisylm.cli import main
from noisylm.errors import NoisyLMError, UsageError
from noisylm.training import TrainConfig, load_config, parse_overrides, train
from noisylm.training.metrics import read_metrics
from noisylm.training.trainer import learning_rate

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def config(data, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), **{**TINY_RUN, **overrides})


def read_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["iter"]: m["train_loss"] for m in read_lines(run_dir) if "train_loss" in m}


# ---------------------------------------------------------------------------------------------------------
# The run directory


def test_run_directory_follows_the_contract(tmp_path, noisy_bytes, python_docs_bytes):
    run = tmp_path / "run"
    cfg = config(
        noisy_bytes, eval_sets={"python-docs": str(python_docs_bytes)}, max_iters=12, eval_interval=6
    )
    cfg.tensorboard = True
    cfg.checkpoint_interval = 4
    summary = train(cfg, run)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "tb",
    ]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["ckpt-0000008", "ckpt-0000012"]  # keep_checkpoints = 2
    assert list((run / "tb").glob("events.out.tfevents.*"))
    record = json.loads((run / "config.json").read_text())
    assert record["train"]["data"] == str(noisy_bytes) and record["model"]["vocab_size"] == 257
    assert record["sampling"]["sampler"] == "paired" and record["sampling"]["noise_rate"] > 0.19
    assert "provenance" in record and record["provenance"]["seed"] == cfg.seed

    lines = read_lines(run)
    train_lines = [m for m in lines if "train_loss" in m]
    eval_lines = [m for m in lines if "eval" in m]
    assert [m["iter"] for m in train_lines] == list(range(1, 13))
    for m in train_lines:
        assert set(m) == {
            "iter",
            "tokens",
            "clean_tokens",
            "lr",
            "train_loss",
            "skipped_steps",
            "tokens_per_s",
            "mfu",
        }
        assert m["skipped_steps"] == 0 and m["mfu"] is None  # a CPU has no known peak
        assert m["tokens"] == m["iter"] * 4 * 32 and 0 <= m["clean_tokens"] <= m["tokens"]
    assert [m["iter"] for m in eval_lines] == [0, 6, 12]
    for m in eval_lines:
        assert set(m) == {"iter", "tokens", "clean_tokens", "eval"}
        assert set(m["eval"]) == {"val", "noise", "python-docs"}
    # paired sampling: whole windows are clean or noise, about 1 - alpha of them clean
    assert train_lines[-1]["clean_tokens"] % 32 == 0
    assert 0.5 < train_lines[-1]["clean_tokens"] / train_lines[-1]["tokens"] < 1.0
    assert summary == {**summary, "status": "finished", "iterations": 12, "tokens": 12 * 128}
    assert json.loads((run / "summary.json").read_text())["eval"] == eval_lines[-1]["eval"]
    assert summary["eval"]["val"] < math.log(257)  # it learned something


def test_paired_runs_share_initial_weights_and_eval_windows(tmp_path, shakespeare_bytes, noisy_bytes):
    a = train(config(shakespeare_bytes, max_iters=2), tmp_path / "clean")
    train(config(noisy_bytes, max_iters=2), tmp_path / "noisy")
    first = [read_lines(tmp_path / name)[0] for name in ("clean", "noisy")]
    assert first[0]["iter"] == first[1]["iter"] == 0
    assert first[0]["eval"]["val"] == first[1]["eval"]["val"]  # same weights, same val windows
    assert a["clean_tokens"] == a["tokens"]  # a clean set; the noisy count: test_clean_tokens_...


def test_grad_accumulation_equals_the_larger_batch(tmp_path, shakespeare_bytes):
    big = train(config(shakespeare_bytes, batch_size=8, grad_accum=1, max_iters=4), tmp_path / "big")
    acc = train(config(shakespeare_bytes, batch_size=4, grad_accum=2, max_iters=4), tmp_path / "acc")
    a, b = train_losses(tmp_path / "big"), train_losses(tmp_path / "acc")
    assert a[1] == pytest.approx(b[1], rel=1e-6)  # same 8 windows, same weights
    assert np.allclose(list(a.values()), list(b.values()), rtol=1e-4)
    assert big["tokens"] == acc["tokens"]


@pytest.mark.parametrize("log_interval", [4, 12])
def test_the_host_waits_for_the_device_only_at_log_lines(
    tmp_path, shakespeare_bytes, monkeypatch, log_interval
):
    """Every call that makes the host wait for the device (item, tolist, bool/float/int of a tensor),
    counted by the noisylm function that makes it: between log lines the loop makes none, so a GPU
    never idles while the host waits. (On a CPU nothing is asynchronous; the count is what matters.)"""
    import collections

    calls: collections.Counter = collections.Counter()

    def spy(name):
        real = getattr(torch.Tensor, name)

        def waiting(self, *args, **kwargs):
            caller = sys._getframe(1)
            if "noisylm" in caller.f_code.co_filename:
                calls[(Path(caller.f_code.co_filename).name, caller.f_code.co_name)] += 1
            return real(self, *args, **kwargs)

        return waiting

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    cfg = config(shakespeare_bytes, max_iters=12, log_interval=log_interval, grad_accum=2)
    cfg.eval_interval, cfg.checkpoint_interval, cfg.eval_at_start = 100, 0, False  # both only at the end
    train(cfg, tmp_path / "run")
    logs = 12 // log_interval
    # model.py's backward checks its incoming gradient on the host only when it is a CPU tensor
    calls.pop(("model.py", "backward"), None)
    trainer_calls = {where: n for where, n in calls.items() if where[0] == "trainer.py"}
    # one per log line, one for the checkpoint, one for the summary; the eval at the end has its own
    assert trainer_calls == {("trainer.py", "run"): logs + 2}
    assert {where[0] for where in calls} <= {"trainer.py", "evaluate.py"}


def test_mfu_uses_the_datasheet_peak_of_the_named_gpu():
    """Dense bf16 tensor-core peaks from NVIDIA's datasheets (fp16 where there is no bf16), matched
    by whole name: an A10 is not an A100, an L4 not an L40S, an H100 PCIe not an SXM H100."""
    from noisylm.training.metrics import gpu_peak_flops, peak_flops

    datasheets = {
        "NVIDIA H100 80GB HBM3": 989e12,
        "NVIDIA H100 PCIe": 756e12,
        "NVIDIA H200": 989e12,
        "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA A100 80GB PCIe": 312e12,
        "NVIDIA A10": 125e12,
        "NVIDIA L4": 121e12,
        "NVIDIA L40S": 362e12,
        "Tesla T4": 65e12,
        "NVIDIA A10G": None,  # no NVIDIA datasheet: unknown, MFU null
        "NVIDIA GeForce RTX 3080": None,
    }
    assert {name: gpu_peak_flops(name) for name in datasheets} == datasheets
    assert peak_flops(torch.device("cpu")) is None


def test_learning_rate_schedule_is_warmup_then_cosine():
    cfg = TrainConfig(data="x", learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert learning_rate(0, cfg) == pytest.approx(1 / 11)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2)
    assert learning_rate(110, cfg) == pytest.approx(0.1) and learning_rate(500, cfg) == 0.1
    cfg.decay_lr = False
    assert learning_rate(80, cfg) == 1.0


def test_bf16_autocast_trains_like_fp32(tmp_path, shakespeare_bytes, tiny_run):
    """bf16 autocast on CPU (fp32 master weights and AdamW state) against the fp32 run of the same
    config, seed and windows (`tiny_run`): finite losses that follow fp32's within bf16's rounding."""
    summary = train(config(shakespeare_bytes, dtype="bfloat16"), tmp_path / "bf16")
    record = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert (record["dtype"], record["dtype_reason"]) == ("bfloat16", "set in the config")
    bf16, fp32 = train_losses(tmp_path / "bf16"), train_losses(tiny_run)
    assert all(math.isfinite(v) for v in bf16.values()) and bf16.keys() == fp32.keys()
    assert fp32[30] < fp32[1] - 1.0  # it learned, and bf16 with it:
    assert max(abs(bf16[i] - fp32[i]) for i in fp32) < 0.1  # lr 3e-3 on 128-token batches: noisy steps
    assert abs(sum(bf16[i] - fp32[i] for i in range(21, 31)) / 10) < 0.02
    fp32_eval = json.loads((tiny_run / "summary.json").read_text())["eval"]
    assert summary["eval"]["val"] == pytest.approx(fp32_eval["val"], abs=0.05)
    weights = load_file(str(tmp_path / "bf16" / "checkpoints" / "ckpt-0000030" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


@pytest.mark.parametrize(
    "flags, dtype", [(runtime.AMX_BF16_FLAGS | {"avx512_bf16"}, "bfloat16"), ({"avx512_bf16"}, "float32")]
)
def test_auto_records_its_choice_and_a_resume_keeps_it(
    tmp_path, shakespeare_bytes, monkeypatch, flags, dtype
):
    """`auto` on CPU: the dtype the CPU's flags call for and the reason, in config.json; a resume on a
    CPU with other flags keeps the dtype the run started with (its checkpoint records it)."""
    run = tmp_path / "run"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    train(config(shakespeare_bytes, dtype="auto", max_iters=2, checkpoint_interval=2), run)
    record = json.loads((run / "config.json").read_text())
    assert record["dtype"] == dtype and record["dtype_reason"].startswith(f"auto: {dtype}, the CPU has")
    other = frozenset() if dtype == "bfloat16" else runtime.AMX_BF16_FLAGS
    monkeypatch.setattr(runtime, "cpu_flags", lambda: other)  # "another machine"
    train(config(shakespeare_bytes, dtype="auto", max_iters=4, checkpoint_interval=2), run, resume=True)
    record = json.loads((run / "config.json").read_text())
    assert record["dtype"] == dtype and "as when this run started" in record["dtype_reason"]
    assert sorted(train_losses(run)) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------
# Exact resume


RESUME_SCRIPT = """
import json, sys
from noisylm.training import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], resume=True)
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, shakespeare_bytes):
    fields = {
        **TINY_RUN,
        "data": str(shakespeare_bytes),
        "max_iters": 40,
        "dropout": 0.1,  # RNG state matters
        "eval_interval": 1000,
        "checkpoint_interval": 5,
        "eval_at_start": False,
    }
    reference = tmp_path / "reference"
    train(TrainConfig(**fields), reference)

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, json.dumps(fields), str(run)])
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        iters = [m["iter"] for m in _complete_lines(run / "metrics.jsonl")]
        if iters and iters[-1] >= 13:  # past the checkpoint at 10, before the one at 15 (usually)
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = iters[-1]
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    assert not (run / "summary.json").exists()

    summary = train(TrainConfig(**fields), run, resume=True)
    assert summary["resumed_from"] is not None and summary["iterations"] == 40
    assert train_losses(run) == train_losses(reference)  # every iteration, bitwise (float equality)
    final = [
        load_file(str(d / "checkpoints" / "ckpt-0000040" / "model.safetensors")) for d in (run, reference)
    ]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def _complete_lines(path: Path) -> list[dict]:
    return [m for m in read_metrics(path) if "train_loss" in m]


def test_resume_ignores_half_written_checkpoint_and_extends(tmp_path, shakespeare_bytes):
    run = tmp_path / "run"
    train(config(shakespeare_bytes, max_iters=6, checkpoint_interval=3), run)
    (run / "checkpoints" / ".ckpt-0000009.tmp-123").mkdir()  # what a kill during a save leaves
    (run / "checkpoints" / ".ckpt-0000009.tmp-123" / "model.safetensors").write_bytes(b"garbage")
    summary = train(config(shakespeare_bytes, max_iters=9, checkpoint_interval=3), run, resume=True)
    assert summary["resumed_from"].endswith("ckpt-0000006") and summary["iterations"] == 9
    assert sorted(train_losses(run)) == list(range(1, 10))


def test_resume_of_missing_directory_starts_fresh(tmp_path, shakespeare_bytes):
    summary = train(config(shakespeare_bytes, max_iters=2), tmp_path / "new", resume=True)
    assert summary["status"] == "finished" and summary["resumed_from"] is None
    again = train(config(shakespeare_bytes, max_iters=2), tmp_path / "new", resume=True)  # nothing left
    assert again["iterations"] == 2 and again["eval"] == summary["eval"]
    assert len(train_losses(tmp_path / "new")) == 2


# ---------------------------------------------------------------------------------------------------------
# Failure and bad input


@pytest.mark.parametrize("sampler", ["paired", "uniform"])
def test_clean_tokens_count_the_served_windows(tmp_path, noisy_bytes, monkeypatch, sampler):
    """clean_tokens against an independent count: find every window the sampler served in train.bin
    and count its clean tokens with the shard set's own noise mask."""
    from noisylm.data.shards import ShardSet
    from noisylm.training.data import TrainWindows

    served = []
    real_batch = TrainWindows.batch

    def recording_batch(self, plan, device):
        batch = real_batch(self, plan, device)
        served.extend(batch.x.numpy().copy())  # the model's inputs: the tokens clean_tokens counts
        return batch

    monkeypatch.setattr(TrainWindows, "batch", recording_batch)
    summary = train(config(noisy_bytes, sampler=sampler, max_iters=8, grad_accum=2), tmp_path / "run")
    shards = ShardSet.open(noisy_bytes)
    train_tokens = np.asarray(shards.tokens("train"), dtype="<u2")
    haystack = train_tokens.tobytes()
    clean = noise = 0
    for window in served:
        needle = window.astype("<u2").tobytes()
        at = haystack.find(needle)
        while at % 2:  # a match must start on a token boundary
            at = haystack.find(needle, at + 1)
        assert at >= 0, "a served window is not in train.bin"
        start = at // 2
        in_clean = int(shards.clean_mask(start, start + len(window)).sum())
        clean, noise = clean + in_clean, noise + len(window) - in_clean
    assert len(served) == 8 * 2 * 4  # every micro-batch of every iteration, read once
    assert noise > 0 and clean > 0  # the count is not vacuous
    assert summary["clean_tokens"] == clean and summary["tokens"] == clean + noise
    assert read_lines(tmp_path / "run")[-2]["clean_tokens"] == clean  # the last train line


class _PoisonedGPT:
    """A real GPT whose training forward passes number ``poisoned`` (1-based) produce NaN hidden states:
    a NaN loss and NaN gradients, as a diverging run has."""

    def __new__(cls, config, poisoned):
        from noisylm.model import GPT

        class Poisoned(GPT):
            calls = 0

            def hidden_states(self, idx):
                x = super().hidden_states(idx)
                if self.training:
                    Poisoned.calls += 1
                    if Poisoned.calls in poisoned:
                        x = x * float("nan")
                return x

        return Poisoned(config)


def test_a_non_finite_step_is_skipped_and_never_reaches_the_state(tmp_path, shakespeare_bytes, monkeypatch):
    import noisylm.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "GPT", lambda cfg: _PoisonedGPT(cfg, poisoned={3}))
    run = tmp_path / "run"
    cfg = config(
        shakespeare_bytes, max_iters=6, checkpoint_interval=1, keep_checkpoints=10, eval_interval=100
    )
    summary = train(cfg, run)
    lines = {m["iter"]: m for m in read_lines(run) if "train_loss" in m}
    assert lines[3]["train_loss"] is None and lines[3]["skipped_steps"] == 1
    assert all(
        math.isfinite(lines[i]["train_loss"]) and not lines[i]["skipped_steps"] for i in (1, 2, 4, 5, 6)
    )
    assert summary["status"] == "finished" and summary["skipped_steps"] == 1
    # The checkpoint due after the skipped step waits for the next good step.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["ckpt-0000001", "ckpt-0000002", "ckpt-0000004", "ckpt-0000005", "ckpt-0000006"]
    state = json.loads((run / "checkpoints" / "ckpt-0000004" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["last_step_taken"] == 4
    # AdamW saw 3 steps by iteration 4, not 4: the skipped one did not touch its state (step count,
    # moments) or the weights, which are all finite.
    optimizer = torch.load(run / "checkpoints" / "ckpt-0000004" / "optimizer.pt", weights_only=True)
    per_param = optimizer["optimizer"]["state"].values()
    assert {float(s["step"]) for s in per_param} == {3.0}
    assert all(torch.isfinite(s[k]).all() for s in per_param for k in ("exp_avg", "exp_avg_sq"))
    weights = load_file(str(run / "checkpoints" / "ckpt-0000004" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    # A run whose last step is poisoned writes its final checkpoint anyway: the weights and the whole
    # AdamW state are exactly those of the checkpoint before the skipped step.
    monkeypatch.setattr(trainer_module, "GPT", lambda cfg: _PoisonedGPT(cfg, poisoned={3}))
    train(
        config(shakespeare_bytes, max_iters=3, checkpoint_interval=1, keep_checkpoints=10), tmp_path / "last"
    )
    before, after = (tmp_path / "last" / "checkpoints" / f"ckpt-000000{i}" for i in (2, 3))
    a, b = (load_file(str(d / "model.safetensors")) for d in (before, after))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (torch.load(d / "optimizer.pt", weights_only=True)["optimizer"]["state"] for d in (before, after))
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in ("step", "exp_avg", "exp_avg_sq"))


def test_a_diverging_run_stops_and_names_a_checkpoint_that_resumes(tmp_path, shakespeare_bytes):
    """A healthy start, then a learning rate of 1e4 (no clipping, no warm-up): every step after the
    first at that rate is non-finite. The guard stops the run, names the checkpoint from before the
    divergence, suggests only what applies to this float32 run, and the run resumes from there."""
    run = tmp_path / "run"
    healthy = {"max_iters": 4, "checkpoint_interval": 2, "warmup_iters": 0, "eval_interval": 100}
    train(config(shakespeare_bytes, **healthy), run)
    diverging = {**healthy, "max_iters": 40, "learning_rate": 1e4, "min_lr": 0.0, "grad_clip": 0.0}
    with pytest.raises(NoisyLMError, match="10 consecutive steps had a non-finite loss") as info:
        train(config(shakespeare_bytes, **diverging), run, resume=True)
    message = str(info.value)
    assert "\n" not in message and "ckpt-0000004 (iteration 4" in message and "--resume" in message
    assert "lower learning_rate (now 10000)" in message and "turn on grad_clip" in message
    assert "dtype" not in message and "float32" not in message  # it is a float32 run already
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["checkpoint"].endswith("ckpt-0000004")
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["ckpt-0000002", "ckpt-0000004"]  # none written in the divergence
    lines = {m["iter"]: m for m in read_lines(run) if "train_loss" in m}
    assert all(lines[i]["skipped_steps"] == 1 for i in range(6, 15))

    resumed = train(
        config(shakespeare_bytes, **{**healthy, "max_iters": 8, "learning_rate": 1e-3}), run, resume=True
    )
    assert resumed["status"] == "finished" and resumed["resumed_from"].endswith("ckpt-0000004")
    lines = {m["iter"]: m for m in read_lines(run) if "train_loss" in m}
    assert sorted(lines) == list(range(1, 9))
    assert all(math.isfinite(m["train_loss"]) and m["skipped_steps"] == 0 for m in lines.values())


def test_known_bug_no_nan_checkpoint_and_an_honest_message(tmp_path, shakespeare_bytes, capsys):
    """`noisylm train --model tiny --learning-rate 1e4 --grad-clip 0 --warmup-iters 0
    --checkpoint-interval 2` used to save a checkpoint whose tensors were all NaN and offer it for
    --resume (with a float32 hint to a float32 run). The first step at that rate already ruins the
    weights, so no checkpoint is good: none is written, and the message says so."""
    run = tmp_path / "run"
    args = ["train", "--data", str(shakespeare_bytes), "--model", "tiny", "--learning-rate", "1e4"]
    args += ["--grad-clip", "0", "--warmup-iters", "0", "--checkpoint-interval", "2", "--out", str(run)]
    args += ["--batch-size", "4", "--eval-iters", "1", "--threads", "1", "--progress", "false"]
    args += ["--dtype", "float32"]  # `auto` is bf16 on CPUs with AMX
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite loss or gradient" in err and "no checkpoint was written" in err
    assert "--overwrite" in err and "float32" not in err
    assert not list(run.glob("checkpoints/*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["checkpoint"] is None


def test_existing_run_is_never_overwritten_without_flag(tmp_path, shakespeare_bytes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    with pytest.raises(NoisyLMError, match="--overwrite"):
        train(config(shakespeare_bytes, max_iters=1), run)
    with pytest.raises(NoisyLMError, match="vocab"):  # bad input + --overwrite: still nothing lost
        train(config(shakespeare_bytes, max_iters=1, vocab_size=50257), run, overwrite=True)
    assert (run / "precious.txt").read_text() == "keep me"


def test_bad_data_is_one_clear_error(tmp_path, shakespeare_bytes, shakespeare_gpt2):
    from test_training_data import make_shards

    cases = [
        (config(tmp_path / "missing"), "not found"),
        (config(shakespeare_bytes, vocab_size=50257), "vocab_size = 50257.*257"),
        (config(shakespeare_bytes, eval_sets={"gpt2": str(shakespeare_gpt2)}), "tokenizer 'gpt2'"),
        (
            config(make_shards(tmp_path / "small", np.arange(500) % 250, np.arange(10))),
            "val.*fewer than block",
        ),
    ]
    if importlib.util.find_spec("wandb") is None:
        cases.append((config(shakespeare_bytes, wandb_project="p"), "pip install wandb"))
    for cfg, words in cases:
        with pytest.raises(NoisyLMError, match=words) as info:
            train(cfg, tmp_path / "run")
        assert "\n" not in str(info.value)
        assert not (tmp_path / "run").exists()


def test_resume_with_other_model_or_corrupt_checkpoint(tmp_path, shakespeare_bytes):
    run = tmp_path / "run"
    train(config(shakespeare_bytes, max_iters=3), run)
    with pytest.raises(NoisyLMError, match="cannot resume.*model"):
        train(config(shakespeare_bytes, max_iters=6, n_embd=32), run, resume=True)
    weights = run / "checkpoints" / "ckpt-0000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(NoisyLMError, match="corrupt") as info:
        train(config(shakespeare_bytes, max_iters=6), run, resume=True)
    assert "ckpt-0000003" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Config files and the command line


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"learning_rate": "fast"}, "learning_rate must be float"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"sampler": "random"}, "paired, uniform"),
        ({"dtype": "int8"}, "float32"),
        ({"model": "huge"}, "gpt2-124m"),
        ({"n_head": 3}, "divisible"),
        ({"eval_sets": {"val": "x"}}, "reserved"),
        ({"beta2": 1.5}, "beta2"),
        ({"compile": "yes"}, "compile must be true, false or auto"),
        ({"compile": 3}, "compile must be bool or str"),
        ({"parallelism": "zero"}, "ddp, fsdp"),
        ({"max_bad_steps": 0}, "max_bad_steps must be >= 1"),
        ({}, None),
    ],
)
def test_config_validation(fields, words):
    values = {"data": "d", **fields}
    if words is None:
        values.pop("data")
        words = "no `data`"
    with pytest.raises(UsageError, match=words):
        TrainConfig(**values)


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(UsageError, match="unknown config key.*lr_max.*valid keys: data, eval_sets"):
        TrainConfig.from_dict({"data": "d", "lr_max": 1})
    with pytest.raises(UsageError, match="unknown config key 'itters'.*max_iters"):
        parse_overrides(["--itters", "3"])


def test_config_files_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('data = "d"\nmax_iters = 50\nlearning_rate = 1e-3\n[eval_sets]\ndocs = "e"\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("train:\n  data: d\n  max_iters: 50\n  learning_rate: 0.001\n  eval_sets: {docs: e}\n")
    js = tmp_path / "run.json"
    js.write_text(
        json.dumps({"data": "d", "max_iters": 50, "learning_rate": 1e-3, "eval_sets": {"docs": "e"}})
    )
    configs = [load_config(p) for p in (toml, yaml, js)]
    assert configs[0] == configs[1] == configs[2]
    overrides = parse_overrides(["--max-iters", "7", "--compile", "--eval_sets.more=f", "--data_seed=none"])
    assert overrides == {"max_iters": 7, "compile": True, "eval_sets": {"more": "f"}, "data_seed": None}
    assert parse_overrides(["--compile", "auto"]) == {"compile": "auto"}
    assert parse_overrides(["--compile=off", "--parallelism", "fsdp"]) == {
        "compile": False,
        "parallelism": "fsdp",
    }
    cfg = load_config(toml, overrides)
    assert cfg.max_iters == 7 and cfg.compile and cfg.eval_sets == {"docs": "e", "more": "f"}
    bad = tmp_path / "bad.toml"
    bad.write_text("max_iters = [")
    with pytest.raises(UsageError, match="cannot parse config file"):
        load_config(bad)


def test_cli_train_and_bad_key(tmp_path, shakespeare_bytes, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{shakespeare_bytes}"\nmodel = "tiny"\nblock_size = 32\nthreads = 1\n')
    args = ["train", str(cfg), "--out", str(tmp_path / "run"), "--max-iters", "2", "--batch_size", "2"]
    args += ["--eval-iters", "1", "--progress", "false", "--tensorboard", "false"]
    assert main(args) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batch_size"] == 2
    assert main(args) == 1  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", str(cfg), "--out", str(tmp_path / "x"), "--max-itters", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key or argument --max-itters 2; valid keys: data, eval_sets" in err


# ---------------------------------------------------------------------------------------------------------
# Golden losses: the numbers of a fixed tiny run, recorded from the loop before it was reworked for GPUs


GOLDEN = Path(__file__).parent / "fixtures" / "golden_tiny_run.json"
GOLDEN_RUN = {
    **TINY_RUN,
    "max_iters": 20,
    "grad_accum": 2,
    "dropout": 0.1,  # the RNG stream matters
    "eval_interval": 10,
    "checkpoint_interval": 10,
}


def _golden_record(run_dir: Path) -> dict:
    lines = read_lines(run_dir)
    return {
        "train": [
            [m["iter"], m["tokens"], m["clean_tokens"], m["train_loss"]] for m in lines if "train_loss" in m
        ],
        "eval": [[m["iter"], m["eval"]] for m in lines if "eval" in m],
    }


def _platform() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def test_golden_losses_are_reproduced_bit_for_bit(tmp_path, noisy_bytes):
    """A tiny fp32 CPU run (paired sampling with noise, accumulation, clipping, dropout, a mid-run
    checkpoint and evaluation) logs exactly the losses recorded in tests/fixtures/golden_tiny_run.json.
    Exact float equality on the platform that recorded them (same torch build and CPU kernels); other
    platforms' kernels round differently, so there the check is to 1e-5."""
    golden = json.loads(GOLDEN.read_text())
    train(TrainConfig(data=str(noisy_bytes), **GOLDEN_RUN), tmp_path / "run")
    got = _golden_record(tmp_path / "run")
    assert [row[:3] for row in got["train"]] == [row[:3] for row in golden["train"]]  # iter, tokens, clean
    assert [row[0] for row in got["eval"]] == [row[0] for row in golden["eval"]]
    if _platform() == golden["platform"]:
        assert got["train"] == golden["train"]
        assert got["eval"] == golden["eval"]
    else:
        assert [r[3] for r in got["train"]] == pytest.approx([r[3] for r in golden["train"]], rel=1e-5)
        for (_, a), (_, b) in zip(got["eval"], golden["eval"], strict=True):
            assert a == pytest.approx(b, rel=1e-5)


def record_golden(out: Path = GOLDEN) -> None:
    """Write the fixture from the current code (run only when the numbers are meant to change):
    python tests/test_trainer.py --record-golden"""
    import tempfile

    from noisylm.data.injection import inject
    from noisylm.data.preparation import prepare

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)  # the conftest fixtures, built the same way
        from conftest import _plays

        prepare(_plays(), tmp / "clean", tokenizer="bytes", val_fraction=0.25, seed=0, progress=False)
        inject(
            tmp / "clean",
            tmp / "noisy",
            alpha=0.2,
            kind="uniform",
            seed=0,
            placement="append",
            progress=False,
        )
        train(TrainConfig(data=str(tmp / "noisy"), **GOLDEN_RUN), tmp / "run")
        record = {"config": GOLDEN_RUN, "platform": _platform(), **_golden_record(tmp / "run")}
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {k: "[\n  " + ",\n  ".join(json.dumps(r) for r in record[k]) + "\n ]" for k in ("train", "eval")}
    head = ",\n ".join(f"{json.dumps(k)}: {json.dumps(record[k])}" for k in ("config", "platform"))
    out.write_text("{\n " + head + ",\n " + ",\n ".join(f'"{k}": {v}' for k, v in rows.items()) + "\n}\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record-golden"]:
        raise SystemExit("usage: python tests/test_trainer.py --record-golden")
    record_golden()
