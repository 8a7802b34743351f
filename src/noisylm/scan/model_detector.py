"""The model detector (``--model CKPT``): a trained checkpoint's per-token loss as the score. Random noise
sits near log V, clean text far below; the threshold is halfway between the median window loss and log V.
"""

from __future__ import annotations

import math

import numpy as np

from noisylm.errors import NoisyLMError
from noisylm.scan.config import ScanConfig
from noisylm.scan.detectors import Detection
from noisylm.scan.features import robust_location
from noisylm.scan.segmentation import flagged_regions, merge_regions, segment
from noisylm.scan.streaming import window_means


def model_token_losses(
    tokens: np.ndarray, config: ScanConfig, vocab_size: int, tokenizer: str, progress: bool | None
) -> np.ndarray:
    """Next-token loss (nats, float32) of every token under ``config.model``, aligned with ``tokens``:
    entry t = −log p(x_t | the tokens before it in its window of ``config.model_context`` predictions
    (default: the model's block size)); entry 0 has no context and is 0."""
    from noisylm.training.evaluate import load_eval_model, stream_token_losses  # torch: only here

    assert config.model is not None
    loaded = load_eval_model(config.model, config.device)
    model = loaded.model
    if model.config.vocab_size != vocab_size:
        raise NoisyLMError(
            f"model {config.model} has vocab_size {model.config.vocab_size} but the shards' tokenizer "
            f"{tokenizer!r} has {vocab_size}; scan with a model trained on this tokenizer"
        )
    losses = np.zeros(len(tokens), dtype=np.float32)
    stream_token_losses(
        model,
        tokens,
        length=config.model_context or model.config.block_size,
        batch_size=config.model_batch,
        autocast=loaded.autocast,
        out=losses[1:],
        progress=progress,
    )
    return losses


def detect_model(tokens: np.ndarray, losses: np.ndarray, vocab_size: int, config: ScanConfig) -> Detection:
    """Per-token model loss; random noise sits near log V. Threshold: halfway from the median window
    loss to log V, unless given."""
    n = len(tokens)
    per = config.stride
    padded = np.zeros(((n + per - 1) // per) * per, dtype=np.float64)
    padded[:n] = losses
    sums = padded.reshape(-1, per).sum(axis=1)
    scores = window_means(sums, n, config.stride, config.window)
    log_vocab = math.log(vocab_size)
    threshold = config.threshold
    if threshold is None:
        threshold = 0.5 * (robust_location(scores)[0] + log_vocab)
    regions = merge_regions(
        flagged_regions(scores > threshold, n, config.stride, config.window), config.stride, n
    )
    shifted = losses.astype(np.float64) - threshold
    spans = segment(regions, lambda a, b: shifted[a:b], config)
    return Detection(
        spans, scores, threshold, "mean model loss per token (nats)", details={"log_vocab": log_vocab}
    )
