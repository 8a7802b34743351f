"""train(): the run directory contract, exact resume after SIGKILL, DDP equivalence, bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
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
        assert set(m) == {"iter", "tokens", "clean_tokens", "lr", "train_loss", "tokens_per_s", "mfu"}
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
    b = train(config(noisy_bytes, max_iters=2), tmp_path / "noisy")
    first = [read_lines(tmp_path / name)[0] for name in ("clean", "noisy")]
    assert first[0]["iter"] == first[1]["iter"] == 0
    assert first[0]["eval"]["val"] == first[1]["eval"]["val"]  # same weights, same val windows
    assert a["clean_tokens"] == a["tokens"] and b["clean_tokens"] <= b["tokens"]


def test_grad_accumulation_equals_the_larger_batch(tmp_path, shakespeare_bytes):
    big = train(config(shakespeare_bytes, batch_size=8, grad_accum=1, max_iters=4), tmp_path / "big")
    acc = train(config(shakespeare_bytes, batch_size=4, grad_accum=2, max_iters=4), tmp_path / "acc")
    a, b = train_losses(tmp_path / "big"), train_losses(tmp_path / "acc")
    assert a[1] == pytest.approx(b[1], rel=1e-6)  # same 8 windows, same weights
    assert np.allclose(list(a.values()), list(b.values()), rtol=1e-4)
    assert big["tokens"] == acc["tokens"]


def test_learning_rate_schedule_is_warmup_then_cosine():
    cfg = TrainConfig(data="x", learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert learning_rate(0, cfg) == pytest.approx(1 / 11)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2)
    assert learning_rate(110, cfg) == pytest.approx(0.1) and learning_rate(500, cfg) == 0.1
    cfg.decay_lr = False
    assert learning_rate(80, cfg) == 1.0


def test_bf16_autocast_trains(tmp_path, shakespeare_bytes):
    summary = train(config(shakespeare_bytes, dtype="bfloat16", max_iters=3), tmp_path / "bf16")
    assert math.isfinite(summary["train_loss"])
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


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


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shakespeare_bytes):
    run = tmp_path / "run"
    cfg = config(shakespeare_bytes, learning_rate=1e4, min_lr=0.0, warmup_iters=0, grad_clip=0.0)
    cfg.checkpoint_interval = 1
    with pytest.raises(NoisyLMError, match="training loss became (nan|inf)") as info:
        train(cfg, run)
    assert "\n" not in str(info.value)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["checkpoint"]
    weights = load_file(str(Path(summary["checkpoint"]) / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


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
# DDP


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path, shakespeare_bytes):
    """Two gloo processes with the environment torchrun gives them (RANK, WORLD_SIZE, MASTER_ADDR...;
    started directly, which saves the launcher's start-up) against one process, same global batch."""
    fields = {**TINY_RUN, "data": str(shakespeare_bytes), "max_iters": 6, "grad_accum": 2, "eval_interval": 3}
    single = tmp_path / "single"
    train(TrainConfig(**fields), single)
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(fields))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "noisylm", "train", str(cfg_file), "--out", str(tmp_path / "ddp")]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "trained 6 iterations" in outputs[0][0] and not outputs[1][0]  # rank 0 reports
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    a, b = read_lines(single), read_lines(tmp_path / "ddp")
    assert [m["iter"] for m in a] == [m["iter"] for m in b]
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"] and x["clean_tokens"] == y["clean_tokens"]
        if "train_loss" in x:
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        else:
            assert y["eval"] == pytest.approx(x["eval"], rel=1e-5)
