"""Checkpoints: atomic, keep the last K, code-free loading (weights_only / safetensors), corruption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from noisylm.errors import NoisyLMError
from noisylm.model import GPT, GPTConfig
from noisylm.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _model_and_optimizer():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=70, n_layer=1, n_head=2, n_embd=16))
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95))
    _, loss = model(torch.randint(0, 70, (2, 8)), torch.randint(0, 70, (2, 8)))
    loss.backward()
    optimizer.step()
    return model, optimizer


def _save(root, iteration, model, optimizer, keep=2):
    state = {"model": model.config.to_dict(), "data": {"tokenizer": "bytes"}, "sampler": {"slot": iteration}}
    rng = [ckpt.rng_state(torch.device("cpu"))]
    return ckpt.save_checkpoint(root, iteration, model, optimizer, state, rng, keep=keep)


def test_roundtrip_is_exact_and_loads_without_code(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = _save(tmp_path / "checkpoints", 7, model, optimizer)
    assert path.name == "ckpt-0000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "optimizer.pt",
        "rng.pt",
        "trainer_state.json",
    ]
    weights = load_file(str(path / "model.safetensors"))
    assert "lm_head.weight" not in weights  # tied: stored once
    opt = torch.load(path / "optimizer.pt", weights_only=True)  # would refuse pickled code
    rng = torch.load(path / "rng.pt", weights_only=True)
    assert torch.equal(rng["ranks"][0]["cpu"], torch.get_rng_state())

    loaded, state, where = ckpt.load_model(tmp_path)  # a run-like directory: newest checkpoint
    assert where == path and state["iter"] == 7 and state["format"] == ckpt.CHECKPOINT_FORMAT
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    fresh = GPT(model.config).configure_optimizer(0.1, 1e-3, (0.9, 0.95))
    fresh.load_state_dict(opt["optimizer"])
    a, b = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)


def test_weights_only_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    (tmp_path / "ckpt-0000001").mkdir()
    torch.save({"optimizer": Evil()}, tmp_path / "ckpt-0000001" / "optimizer.pt")
    torch.save({"ranks": []}, tmp_path / "ckpt-0000001" / "rng.pt")
    with pytest.raises(NoisyLMError, match="holds Python objects, not only tensors"):
        ckpt.load_training_state(tmp_path / "ckpt-0000001")


def test_keeps_only_the_newest_k_and_ignores_temporaries(tmp_path):
    model, optimizer = _model_and_optimizer()
    root = tmp_path / "checkpoints"
    for it in (5, 10, 15, 20):
        _save(root, it, model, optimizer, keep=3)
    (root / ".ckpt-0000025.tmp-999").mkdir()  # a save that was killed half-way
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["ckpt-0000010", "ckpt-0000015", "ckpt-0000020"]
    assert ckpt.latest_checkpoint(root).name == "ckpt-0000020"


def test_corrupt_or_missing_checkpoints_are_one_clear_error(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = _save(tmp_path / "checkpoints", 3, model, optimizer)
    with pytest.raises(NoisyLMError, match="not found"):
        ckpt.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoisyLMError, match="holds no checkpoint"):
        ckpt.load_model(tmp_path / "empty")
    (path / "trainer_state.json").write_text("{not json")
    with pytest.raises(NoisyLMError, match="ckpt-0000003 is corrupt"):
        ckpt.load_model(path)
    other = dict(model.config.to_dict(), n_embd=32)
    (path / "trainer_state.json").write_text(json.dumps({"format": ckpt.CHECKPOINT_FORMAT, "model": other}))
    with pytest.raises(NoisyLMError, match="different model config"):
        ckpt.load_model(path)
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(NoisyLMError, match="corrupt"):
        ckpt.load_weights(model, path)


def test_sharded_checkpoint_loads_on_one_process_and_fails_clearly(tmp_path):
    """A sharded (FSDP2 + torch.distributed.checkpoint) checkpoint, written by a group of one process,
    read back by `load_model` with no process group: the same weights; damage is one clear line."""
    import torch.distributed as dist

    from noisylm.training.trainer import shard_model

    model, _ = _model_and_optimizer()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_model(model, torch.device("cpu"), 1)
        optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95))
        state = {"model": model.config.to_dict(), "data": {"tokenizer": "bytes"}, "sampler": {"slot": 4}}
        rng = [ckpt.rng_state(torch.device("cpu"))]
        path = ckpt.save_sharded_checkpoint(tmp_path / "checkpoints", 4, model, optimizer, state, rng)
    finally:
        dist.destroy_process_group()
    assert sorted(p.name for p in path.iterdir()) == ["dcp", "rng.pt", "scaler.pt", "trainer_state.json"]
    assert ckpt.is_sharded(path) and [p.name for p in ckpt.weight_files(path)] == [
        ".metadata",
        "__0_0.distcp",
    ]

    loaded, trainer_state, where = ckpt.load_model(tmp_path)
    assert where == path and trainer_state["iter"] == 4 and trainer_state["sharded"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert loaded.lm_head.weight is loaded.transformer.wte.weight

    other = GPT(GPTConfig(block_size=8, vocab_size=70, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(NoisyLMError, match="different model config"):
        ckpt.load_weights(other, path)
    shard = path / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(NoisyLMError, match="ckpt-0000004 is corrupt"):
        ckpt.load_model(path)
    (path / "dcp" / ".metadata").write_bytes(b"garbage")
    with pytest.raises(NoisyLMError, match="ckpt-0000004 is corrupt"):
        ckpt.load_model(path)
