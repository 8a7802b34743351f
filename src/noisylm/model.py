"""The GPT-2 language model, in one file.

The architecture of GPT-2 as nanoGPT writes it: pre-LayerNorm blocks, fused QKV projection, causal
`scaled_dot_product_attention`, GELU MLP, input and output embeddings tied, GPT-2 initialisation
(residual projections scaled by 1/sqrt(2 * n_layer)), vocabulary padded to a multiple of 64, optional
bias and dropout.

One difference matters for speed and memory: the training loss never materialises the full
(tokens x vocab) logits. `chunked_cross_entropy` computes logits for a chunk of positions at a time and
the gradient of the loss with respect to the hidden states and the output embedding in the same pass,
so the output layer (which dominates time and memory at vocab 50257) needs only one chunk of logits.

References: nanoGPT (https://github.com/karpathy/nanoGPT), GPT-2 (Radford et al., 2019).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from noisylm.errors import UsageError

VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple of this for fast matmuls
DEFAULT_CE_CHUNK_TOKENS = 512  # positions per chunk in `chunked_cross_entropy`
CPU_LOW_PRECISION_HEAD_DIM = 64  # smallest head size whose bf16 CPU attention is not slower than fp32


@dataclass
class GPTConfig:
    """Shape of a GPT-2 model.

    Attributes:
        block_size: longest context (positions) the model sees.
        vocab_size: number of token ids of the tokenizer (50257 for GPT-2 BPE, 257 for bytes). The
            embedding table has `padded_vocab_size` rows; the padding rows are never predicted.
        n_layer: number of transformer blocks.
        n_head: attention heads per block; must divide `n_embd`.
        n_embd: width of the residual stream.
        dropout: dropout probability on attention, residual and embedding outputs (0 in pre-training).
        bias: whether Linear and LayerNorm layers have a bias (GPT-2 has them).
    """

    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"model {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise UsageError(
                f"model n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "choose n_embd as a multiple of n_head"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UsageError(f"model dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise UsageError(f"model bias must be true or false, got {self.bias!r}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The paper's sizes (App. D.2, D.5) and CPU-sized models for the demo and the tests.
PRESETS: dict[str, GPTConfig] = {
    "gpt2-124m": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350m": GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-774m": GPTConfig(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128),  # ~0.8M params at vocab 257
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64),  # tests
}


def preset(name: str, **overrides) -> GPTConfig:
    """The preset ``name`` with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = PRESETS[name].to_dict()
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return GPTConfig(**fields)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        if (
            q.device.type == "cpu"
            and q.dtype != torch.float32
            and C // self.n_head < CPU_LOW_PRECISION_HEAD_DIM
        ):
            # PyTorch's CPU flash attention is 2-3x slower in bf16 than in fp32 below head size 64
            # (BENCHMARKS.md): these heads attend in fp32, the projections around them stay in bf16.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), dropout_p=dropout_p, is_causal=True
                )
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact (erf) GELU, as nanoGPT; exported to HF as "gelu"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2. ``model(idx, targets)`` returns ``(None, mean loss)``; ``model(idx)`` returns the logits of
    the last position, shape (B, 1, vocab_size), for generation."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.ce_chunk_tokens = DEFAULT_CE_CHUNK_TOKENS
        # Eager; `compile_gpt` swaps in the torch.compiler-disabled version (see there for why).
        self.cross_entropy = chunked_cross_entropy
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (as nanoGPT and GPT-2 report)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    @property
    def output_weight(self) -> torch.Tensor:
        """Output embedding rows of the real vocabulary (the padding rows are never predicted)."""
        return self.lm_head.weight[: self.config.vocab_size]

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final (layer-normed) hidden states, shape (B, T, n_embd)."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise UsageError(
                f"sequence of length {T} is longer than the model's block_size {self.config.block_size}"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x = self.hidden_states(idx)
        if targets is None:  # generation: only the last position's logits are needed
            return F.linear(x[:, [-1], :], self.output_weight), None
        # The whole (padded) table, so that its gradient is written in one piece (see `n_classes`).
        loss = self.cross_entropy(
            x.reshape(-1, x.size(-1)),
            self.lm_head.weight,
            targets.reshape(-1),
            self.ce_chunk_tokens,
            n_classes=self.config.vocab_size,
        )
        return None, loss

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits at every position, shape (B, T, vocab_size); for tests and export, not training."""
        return F.linear(self.hidden_states(idx), self.output_weight)

    @torch.no_grad()
    def token_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-position next-token loss, shape (B, T), float32, computed chunk by chunk."""
        x = self.hidden_states(idx)
        losses = chunked_cross_entropy(
            x.reshape(-1, x.size(-1)), self.output_weight, targets.reshape(-1), self.ce_chunk_tokens, "none"
        )
        return losses.view(targets.shape)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B, as nanoGPT's MFU."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def configure_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], fused: bool | None = None
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices (dim >= 2) only: no decay on biases and LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        if fused is None:  # fused kernels exist for CUDA, and for CPU in recent PyTorch
            fused = _fused_adamw_supported(params[0].device)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused or None)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits, _ = self(context)
            logits = logits[:, -1, :].float()
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits[logits < kth] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx


def _fused_adamw_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    if device.type == "cpu":  # fused CPU AdamW landed in PyTorch 2.4
        major, minor = (int(p) for p in torch.__version__.split(".")[:2])
        return (major, minor) >= (2, 4)
    return False


# ---------------------------------------------------------------------------------------------------------
# Chunked cross-entropy: the output layer without the full logits matrix.


def compile_gpt(model: GPT) -> nn.Module:
    """``torch.compile(model)`` with the chunked output layer left eager (a Python loop over chunks:
    the compiler takes the blocks). The disabling is applied here, not as a decorator, because
    ``torch.compiler.disable`` imports torch._dynamo, ~2 s of every process's start-up on CPU, and
    most processes (a demo run, evaluation, extraction) never compile."""
    model.cross_entropy = torch.compiler.disable(chunked_cross_entropy)
    return torch.compile(model)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int = DEFAULT_CE_CHUNK_TOKENS,
    reduction: str = "mean",
    ignore_index: int = -1,
    n_classes: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight[:n_classes].T`` against ``targets``, ``chunk_tokens`` rows at a
    time.

    Equal to ``F.cross_entropy(hidden @ weight[:n_classes].T, targets, ignore_index=ignore_index)``, but
    only one chunk of logits exists at any time. When gradients are needed, the gradient with respect to
    ``hidden`` and ``weight`` is computed in the same pass (softmax minus one-hot), so the backward pass
    does not need the logits either. ``n_classes`` (default: every row of ``weight``) lets ``weight`` be
    a padded embedding table whose last rows are never predicted: their gradient is zero, written here,
    so autograd does not zero-fill and copy a table-sized gradient for a slice. ``reduction`` is "mean"
    (over targets != ignore_index), "sum" or "none" (per-row losses, float32; no gradient).
    """
    n_classes = weight.size(0) if n_classes is None else n_classes
    if not 0 < n_classes <= weight.size(0):
        raise ValueError(f"n_classes must be in [1, {weight.size(0)}] (the rows of weight), got {n_classes}")
    if reduction == "none":
        with torch.no_grad():
            return _cross_entropy_rows(hidden, weight[:n_classes], targets, chunk_tokens, ignore_index)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(
            hidden, weight, targets, chunk_tokens, reduction, ignore_index, n_classes
        )
    with torch.no_grad():
        losses = _cross_entropy_rows(hidden, weight[:n_classes], targets, chunk_tokens, ignore_index)
    total = losses.sum()
    return total / (targets != ignore_index).sum().clamp(min=1) if reduction == "mean" else total


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype if autocast is on for this device."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def _cross_entropy_rows(hidden, weight, targets, chunk_tokens, ignore_index) -> torch.Tensor:
    dtype = _compute_dtype(hidden)
    w = weight.to(dtype)
    losses = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), chunk_tokens):
        end = min(start + chunk_tokens, hidden.size(0))
        logits = (hidden[start:end].to(dtype) @ w.t()).float()
        t = targets[start:end]
        losses[start:end] = F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="none")
    return losses


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and both gradients in one chunked pass; ``backward`` only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, reduction, ignore_index, n_classes):
        dtype = _compute_dtype(hidden)
        low = dtype != torch.float32  # bf16/fp16: matmuls in `dtype`, log-softmax and loss in float32
        n_rows, vocab = hidden.size(0), n_classes
        rows = min(chunk_tokens, n_rows)
        # Log-softmax and exp run on blocks of rows small enough (~8 MB) to stay in cache between the
        # two: one pass over a chunk's logits from memory instead of two (bitwise the same: row-wise ops).
        block = max(1, (8 << 20) // (4 * vocab))
        device = hidden.device
        with torch.autocast(device.type, enabled=False):
            h_all = hidden.to(dtype)
            w = weight[:vocab].to(dtype)
            valid = targets != ignore_index
            # Ignored targets get no loss and no gradient: masked in the (small) losses, hidden states
            # and hidden-state gradients rather than in the logits, and without the host waiting to
            # learn whether there are any (a sync in every training step on a GPU).
            masks = valid[:, None]
            safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
            grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_table = None  # the gradient of all of `weight`: that of its first `vocab` rows, then zeros
            grad_weight = None
            if ctx.needs_input_grad[1]:
                grad_table = torch.empty_like(weight, dtype=torch.float32)
                grad_table[vocab:].zero_()
                grad_weight = grad_table[:vocab]  # contiguous: matmuls write into it directly
            loss = torch.zeros((), dtype=torch.float32, device=device)
            # One float32 logits buffer, reused by every chunk (fresh large allocations cost page faults).
            buffer = torch.empty(rows, vocab, dtype=torch.float32, device=device)
            if low:  # and one of each `dtype` matmul output, for the same reason: no per-chunk tensors
                logits_low = torch.empty(rows, vocab, dtype=dtype, device=device)  # logits, then gradient
                grad_weight_low = torch.empty_like(w) if grad_weight is not None else None
            grad_hidden_low = None  # where the hidden-state gradient is computed when it is not `dtype`
            if grad_hidden is not None and grad_hidden.dtype != dtype:
                grad_hidden_low = torch.empty(rows, hidden.size(1), dtype=dtype, device=device)
            for start in range(0, n_rows, chunk_tokens):
                end = min(start + chunk_tokens, n_rows)
                h = h_all[start:end]
                t = safe_targets[start:end, None]
                logits = buffer[: end - start]
                if low:
                    torch.mm(h, w.t(), out=logits_low[: end - start])
                    logits.copy_(logits_low[: end - start])
                else:
                    torch.mm(h, w.t(), out=logits)
                # Row-wise fused log-softmax, in place (each row is read before it is written), the
                # targets' log-probabilities, then exp: the softmax, without another logits-sized buffer.
                row_loss = torch.empty_like(t, dtype=torch.float32)
                for first in range(0, end - start, block):
                    part = logits[first : first + block]
                    torch.log_softmax(part, dim=1, out=part)
                    torch.gather(part, 1, t[first : first + block], out=row_loss[first : first + block])
                    part.exp_()
                mask = masks[start:end]
                row_loss = -row_loss * mask
                grad_logits = logits
                grad_logits.scatter_add_(1, t, torch.full_like(row_loss, -1.0))  # minus one-hot, in float32
                loss += row_loss.sum()
                if low:  # the one rounding of the gradient, into the buffer its logits came from
                    grad_logits = logits_low[: end - start].copy_(grad_logits)
                if grad_hidden is not None:
                    rows_out = grad_hidden[start:end]
                    if grad_hidden_low is None:
                        torch.mm(grad_logits, w, out=rows_out)
                    else:
                        rows_out.copy_(torch.mm(grad_logits, w, out=grad_hidden_low[: end - start]))
                    rows_out.mul_(mask)
                if grad_weight is not None:
                    h = h * mask  # ignored rows add nothing to the output layer's gradient
                    if low:  # accumulated in float32 (fp32 master weights), added without a cast copy
                        torch.mm(grad_logits.t(), h, out=grad_weight_low)
                        if start == 0:
                            grad_weight.copy_(grad_weight_low)
                        else:
                            grad_weight.add_(grad_weight_low)
                    elif start == 0:
                        torch.mm(grad_logits.t(), h, out=grad_weight)
                    else:
                        grad_weight.addmm_(grad_logits.t(), h)
            if reduction == "mean":
                scale = 1.0 / valid.sum().clamp(min=1).float()
                loss = loss * scale
                if grad_hidden is not None:
                    grad_hidden.mul_(scale.to(grad_hidden.dtype))
                if grad_weight is not None:
                    grad_weight.mul_(scale)
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_table.to(weight.dtype) if grad_table is not None else torch.empty(0),
        )
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_output.device.type == "cpu" and grad_output.item() == 1.0:  # no copy for a plain .backward()
            return (
                (grad_hidden if ctx.needs_input_grad[0] else None),
                (grad_weight if ctx.needs_input_grad[1] else None),
                None,
                None,
                None,
                None,
                None,
            )
        gh = grad_hidden * grad_output.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = grad_weight * grad_output.to(grad_weight.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None
