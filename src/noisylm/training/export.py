"""`export_hf`: a checkpoint as a Hugging Face ``GPT2LMHeadModel`` folder.

noisylm's GPT is GPT-2 with exact (erf) GELU, as nanoGPT; the exported config says
``activation_function = "gelu"`` so that transformers computes the same function. Weights of the
Linear layers are transposed into GPT-2's Conv1D layout; the padding rows of the embedding are dropped;
models trained without bias get zero biases.
"""

from __future__ import annotations

import gzip
import json
import os
from importlib import resources
from pathlib import Path

import torch

from noisylm.artifacts import atomic_dir, atomic_write_json, provenance
from noisylm.errors import NoisyLMError


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``out`` (config.json, model.safetensors, and the tokenizer: GPT-2's vocab.json + merges.txt,
    or a trained ``bpe:N`` as a `PreTrainedTokenizerFast`) loadable with
    ``GPT2LMHeadModel.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise NoisyLMError("export needs transformers; pip install 'noisylm[hf]'") from None
    from noisylm.artifacts import check_output_dir
    from noisylm.training.checkpoint import load_checkpoint_tokenizer, load_model

    check_output_dir(out, overwrite)
    model, state, path = load_model(ckpt, "cpu")
    cfg = model.config
    tokenizer = state.get("data", {}).get("tokenizer")
    trained = tokenizer is not None and tokenizer.startswith("bpe:")
    bpe = load_checkpoint_tokenizer(state, path, cfg.vocab_size) if trained else None
    eot = 50256 if tokenizer == "gpt2" else bpe.eot_id if bpe is not None else cfg.vocab_size - 1
    hf_config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    hf_model = transformers.GPT2LMHeadModel(hf_config)
    hf_model.load_state_dict(_hf_state_dict(model), strict=False)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer == "gpt2":
            _write_gpt2_tokenizer(tmp, cfg.block_size)
        elif bpe is not None:
            fast = bpe.to_transformers()
            fast.model_max_length = cfg.block_size
            fast.save_pretrained(tmp)
        atomic_write_json(
            tmp / "noisylm_export.json",
            {
                "checkpoint": str(path),
                "iter": state.get("iter"),
                "tokenizer": tokenizer,
                "provenance": provenance(),
            },
        )
    return Path(out)


def _hf_state_dict(model) -> dict[str, torch.Tensor]:
    """noisylm names/layout → GPT2LMHeadModel names/layout (Conv1D weights are [in, out])."""
    cfg, sd = model.config, model.state_dict()
    out = {
        "transformer.wte.weight": sd["transformer.wte.weight"][: cfg.vocab_size],
        "transformer.wpe.weight": sd["transformer.wpe.weight"],
    }
    out["lm_head.weight"] = out["transformer.wte.weight"]
    linear = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        for name in linear:
            weight = sd[f"{p}{name}.weight"]
            out[f"{p}{name}.weight"] = weight.t().contiguous()
            out[f"{p}{name}.bias"] = sd.get(f"{p}{name}.bias", torch.zeros(weight.size(0)))
        for name in ("ln_1", "ln_2"):
            out[f"{p}{name}.weight"] = sd[f"{p}{name}.weight"]
            out[f"{p}{name}.bias"] = sd.get(f"{p}{name}.bias", torch.zeros(cfg.n_embd))
    out["transformer.ln_f.weight"] = sd["transformer.ln_f.weight"]
    out["transformer.ln_f.bias"] = sd.get("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
    return {k: v.detach().clone() for k, v in out.items()}


def _write_gpt2_tokenizer(folder: Path, max_length: int) -> None:
    """vocab.json + merges.txt from the bundled GPT-2 vocabulary: AutoTokenizer.from_pretrained works."""
    assets = resources.files("noisylm") / "assets" / "gpt2"
    (folder / "vocab.json").write_bytes(gzip.decompress((assets / "encoder.json.gz").read_bytes()))
    (folder / "merges.txt").write_bytes(gzip.decompress((assets / "vocab.bpe.gz").read_bytes()))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": max_length,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
            },
            indent=2,
        )
    )
