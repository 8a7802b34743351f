"""The GPT-2 model: config validation, parameter counts, attention and loss against plain references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from noisylm.errors import UsageError
from noisylm.model import GPT, PRESETS, GPTConfig, chunked_cross_entropy, preset

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def tiny(**overrides) -> GPTConfig:
    return GPTConfig(**{**dict(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32), **overrides})


@pytest.mark.parametrize(
    "fields, words",
    [
        (dict(n_embd=30, n_head=4), "not divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(block_size=-1), "block_size"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(bias="yes"), "bias"),
    ],
)
def test_config_rejects_bad_values(fields, words):
    with pytest.raises(UsageError, match=words):
        tiny(**fields)


def test_unknown_preset():
    with pytest.raises(UsageError, match="gpt2-124m"):
        preset("gpt2-xxl")


def _count(n_layer: int, d: int, vocab: int, block: int) -> int:
    """GPT-2 parameters by hand: per block LN(2d) + QKV(3d²+3d) + proj(d²+d) + LN(2d) + fc(4d²+4d) +
    proj(4d²+d); embeddings (tied output), final LN."""
    return n_layer * (12 * d * d + 13 * d) + vocab * d + block * d + 2 * d


@pytest.mark.parametrize("name", ["gpt2-124m", "gpt2-350m", "gpt2-774m"])
def test_paper_presets_have_gpt2_sizes(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        model = GPT(cfg)
    assert cfg.padded_vocab_size == 50304
    expected = _count(cfg.n_layer, cfg.n_embd, 50304, cfg.block_size)
    assert model.num_params(non_embedding=False) == expected
    # The published sizes (124M, 350M, 774M) count the 50257-token vocabulary.
    published = {"gpt2-124m": 124.4e6, "gpt2-350m": 354.8e6, "gpt2-774m": 774.0e6}[name]
    assert abs(_count(cfg.n_layer, cfg.n_embd, 50257, cfg.block_size) - published) / published < 0.002


def test_small_preset_is_cpu_sized():
    model = GPT(preset("small", vocab_size=257))
    assert 0.7e6 < model.num_params() < 0.9e6


def test_init_ties_embeddings_and_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=100, n_layer=8, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.padded_vocab_size == 128
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 8)) < 0.0005
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001


def _reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The same network written out with an explicit causal mask and full logits."""
    cfg = model.config
    B, T = idx.shape
    x = model.transformer.wte.weight[idx] + model.transformer.wpe.weight[:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for block in model.transformer.h:
        h = F.layer_norm(x, (cfg.n_embd,), block.ln_1.weight, block.ln_1.bias)
        q, k, v = (h @ block.attn.c_attn.weight.t() + block.attn.c_attn.bias).split(cfg.n_embd, dim=2)
        q, k, v = (t.view(B, T, cfg.n_head, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + y @ block.attn.c_proj.weight.t() + block.attn.c_proj.bias
        h = F.layer_norm(x, (cfg.n_embd,), block.ln_2.weight, block.ln_2.bias)
        h = F.gelu(h @ block.mlp.c_fc.weight.t() + block.mlp.c_fc.bias)
        x = x + h @ block.mlp.c_proj.weight.t() + block.mlp.c_proj.bias
    x = F.layer_norm(x, (cfg.n_embd,), model.transformer.ln_f.weight, model.transformer.ln_f.bias)
    return x @ model.transformer.wte.weight[: cfg.vocab_size].t()


def test_forward_matches_reference_and_causal():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 100, (3, 16))
    logits = model.logits(idx)
    assert logits.shape == (3, 16, 100)  # padding rows are never predicted
    torch.testing.assert_close(logits, _reference_logits(model, idx), atol=1e-5, rtol=1e-5)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 100
    torch.testing.assert_close(model.logits(changed)[:, :10], logits[:, :10])  # no peeking ahead
    last, loss = model(idx)
    assert loss is None and torch.allclose(last[:, 0], logits[:, -1], atol=1e-6)


def test_training_loss_and_gradients_match_full_cross_entropy():
    torch.manual_seed(0)
    model = GPT(tiny())
    model.ce_chunk_tokens = 7  # several chunks, the last one partial
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    _, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference = F.cross_entropy(model.logits(idx).view(-1, 100), targets.view(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_cross_entropy_with_ignore_index(reduction):
    torch.manual_seed(1)
    hidden = torch.randn(50, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (50,))
    targets[::7] = -1
    loss = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=16, reduction=reduction)
    (loss * 2.5).backward()  # a non-unit upstream gradient
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-1, reduction=reduction)
    (ref * 2.5).backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(got[0], hidden.grad)
    torch.testing.assert_close(got[1], weight.grad)
    rows = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=16, reduction="none")
    ref_rows = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-1, reduction="none")
    torch.testing.assert_close(rows, ref_rows.detach())


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_cross_entropy_on_a_padded_table_predicts_only_its_classes(autocast):
    """``n_classes``: the loss and gradients of a padded table equal autograd's on its first rows, the
    padding rows get an exact zero gradient, and bad values are refused."""
    torch.manual_seed(3)
    hidden = torch.randn(40, 8, requires_grad=True)
    table = torch.randn(64, 8, requires_grad=True)  # 50 classes + 14 padding rows
    targets = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = chunked_cross_entropy(hidden, table, targets, chunk_tokens=16, n_classes=50)
    loss.backward()
    got = hidden.grad.clone(), table.grad.clone()
    hidden.grad = table.grad = None
    cast = (lambda t: t.bfloat16().float()) if autocast else (lambda t: t)
    ref = F.cross_entropy(cast(hidden) @ cast(table[:50]).t(), targets)
    ref.backward()
    tolerance = dict(atol=2e-2, rtol=2e-2) if autocast else {}
    torch.testing.assert_close(loss, ref, **tolerance)
    torch.testing.assert_close(got[0], hidden.grad, **tolerance)
    torch.testing.assert_close(got[1][:50], table.grad[:50], **tolerance)
    assert got[1].shape == table.shape and torch.equal(got[1][50:], torch.zeros(14, 8))
    rows = chunked_cross_entropy(hidden, table, targets, chunk_tokens=16, reduction="none", n_classes=50)
    torch.testing.assert_close(rows, F.cross_entropy(hidden @ table[:50].t(), targets, reduction="none"))
    for bad in (0, 65):
        with pytest.raises(ValueError, match="n_classes"):
            chunked_cross_entropy(hidden, table, targets, n_classes=bad)


@pytest.mark.parametrize("n_embd", [32, 64])  # one head of 32 attends in fp32 on CPU, one of 64 in bf16
def test_bf16_autocast_loss_close_to_fp32(n_embd):
    torch.manual_seed(0)
    model = GPT(tiny(n_embd=n_embd, n_head=1))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    _, fp32 = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, bf16 = model(idx, targets)
    bf16.backward()
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_chunked_cross_entropy_is_float64_on_bf16_inputs_within_rounding():
    """Under bf16 autocast: the loss and both gradients of the chunked output layer against autograd in
    float64 on the same bf16-rounded hidden states and weights (several chunks, the last partial, some
    ignored targets), and the gradients come back in float32 for the float32 master weights."""
    torch.manual_seed(2)
    hidden = torch.randn(70, 32, requires_grad=True)
    weight = (0.5 * torch.randn(300, 32)).requires_grad_()
    targets = torch.randint(0, 300, (70,))
    targets[::9] = -1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=32)
    loss.backward()
    h64 = hidden.detach().bfloat16().double().requires_grad_()
    w64 = weight.detach().bfloat16().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.t(), targets, ignore_index=-1)
    ref.backward()
    assert loss.dtype == hidden.grad.dtype == weight.grad.dtype == torch.float32
    # the logits are rounded to bf16 (relative 2^-9): the mean loss moves by far less than 0.01
    assert abs(loss.item() - ref.item()) < 5e-3
    for got, want in ((hidden.grad, h64.grad), (weight.grad, w64.grad)):
        assert ((got.double() - want).norm() / want.norm()).item() < 2e-2
    assert hidden.grad[::9].abs().max() == 0  # ignored positions get no gradient


def test_token_losses_are_per_position_nll():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    losses = model.token_losses(idx, targets)
    logp = model.logits(idx).log_softmax(-1)
    torch.testing.assert_close(losses, -logp.gather(2, targets[..., None])[..., 0])


def test_sequence_longer_than_block_is_rejected():
    with pytest.raises(UsageError, match="block_size"):
        GPT(tiny()).logits(torch.zeros(1, 17, dtype=torch.long))


def test_generate_greedy_and_top_k():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    start = torch.randint(0, 100, (2, 3))
    greedy = model.generate(start, 20, temperature=0)  # runs past block_size: context is cropped
    assert greedy.shape == (2, 23) and torch.equal(greedy[:, :3], start)
    manual = start
    for _ in range(20):
        manual = torch.cat([manual, model.logits(manual[:, -16:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, manual)
    top1 = model.generate(start, 20, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(top1, greedy)
    a = model.generate(start, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(start, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and int(a.max()) < 100


# nanoGPT's rule, written out by name for a 2-layer model: the weights of the Linear layers (attention and
# MLP projections) and of the two Embedding tables decay, the lm_head through its tie to wte (one tensor,
# counted once); biases and LayerNorm gains and shifts do not.
DECAYED = [
    "transformer.wte.weight",  # = lm_head.weight
    "transformer.wpe.weight",
    *[f"transformer.h.{i}.{layer}.weight" for i in range(2)
      for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")],
]  # fmt: skip
NOT_DECAYED_LAYERNORM = [
    *[f"transformer.h.{i}.{ln}.weight" for i in range(2) for ln in ("ln_1", "ln_2")],
    "transformer.ln_f.weight",
]
BIASES = [
    *[f"transformer.h.{i}.{layer}.bias" for i in range(2)
      for layer in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")],
    "transformer.ln_f.bias",
]  # fmt: skip


@pytest.mark.parametrize("bias", [True, False])
def test_optimizer_decays_exactly_nanogpts_parameters(bias):
    model = GPT(tiny(bias=bias))
    opt = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert model.lm_head.weight is model.get_parameter("transformer.wte.weight")  # tied: one tensor

    def ids(names):
        return sorted(id(model.get_parameter(name)) for name in names)

    assert sorted(map(id, decay["params"])) == ids(DECAYED)  # each once: the tied matrix too
    assert sorted(map(id, no_decay["params"])) == ids(NOT_DECAYED_LAYERNORM + (BIASES if bias else []))
    # nothing left out: every parameter of the model is in exactly one group
    assert len(decay["params"]) + len(no_decay["params"]) == len(dict(model.named_parameters()))
