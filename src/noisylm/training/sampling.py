"""`sample`: text generation from a checkpoint with temperature and top-k (nanoGPT's sample.py)."""

from __future__ import annotations

import os

import torch

from noisylm.errors import UsageError


def sample(
    ckpt: str | os.PathLike,
    prompt: str = "",
    num_samples: int = 1,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 1337,
    device: str = "auto",
) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (the decoded prompt + new text).

    An empty prompt starts from the end-of-text token, i.e. at the start of a document. Temperature 0
    is greedy decoding; ``top_k`` keeps only the k most likely tokens (None = all). The tokenizer is
    the one the checkpoint's training data used. Same seed, same text.
    """
    from noisylm.runtime import resolve_device
    from noisylm.training.checkpoint import load_checkpoint_tokenizer, load_model

    if num_samples < 1 or max_new_tokens < 0:
        raise UsageError("num_samples must be >= 1 and max_new_tokens >= 0")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be >= 1, got {top_k}")
    dev = resolve_device(device)
    model, state, path = load_model(ckpt, dev)
    model.eval()
    tokenizer = load_checkpoint_tokenizer(state, path, model.config.vocab_size)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if max(ids) >= model.config.vocab_size:
        raise UsageError(
            f"the prompt has token ids beyond the model's vocabulary ({model.config.vocab_size})"
        )
    generator = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=dev)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    start = 0 if prompt else 1  # do not print the end-of-text token we started from
    return [tokenizer.decode(row[start:].tolist()) for row in out]
