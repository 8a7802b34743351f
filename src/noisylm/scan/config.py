"""Detector settings of `noisylm scan` (`ScanConfig`), recorded in every artifact it writes."""

from __future__ import annotations

from dataclasses import dataclass

from noisylm.errors import UsageError

DETECTORS = ("mixture", "unigram", "model")


@dataclass
class ScanConfig:
    """Detector settings (recorded in every artifact `scan` writes).

    detector: "mixture" (two-component unigram likelihood ratio, the default), "unigram" (surprisal
        under the corpus's own unigram distribution against a robust threshold) or "model" (per-token
        loss of a trained checkpoint; needs ``model``).
    window: tokens per scoring window. Noise spans much shorter than this are hard to see.
    stride: window step in tokens; also the resolution of the first, window-level pass. Divides window.
    iterations: hard-EM rounds of the mixture detector (re-estimate q_c, q_n from the segmentation).
    threshold: window-score threshold; None = automatic (0 for "mixture": equal likelihood; median +
        ``robust_z`` robust standard deviations for "unigram"; halfway to log V for "model").
    robust_z: how many robust standard deviations (1.4826·MAD) make a window feature an outlier.
    uniform_weight: share of the uniform distribution inside the noise model q_n (keeps q_n "random").
    smoothing: add-k pseudo-count of the unigram estimates.
    min_span: shortest span (tokens) kept after segmentation.
    min_score: smallest total log-likelihood ratio (nats) of a kept span.
    bigram: re-score candidate spans against a bigram model of the clean text (mixture detector):
        random noise has no sequential structure, text does, even text whose unigram statistics are
        unusual (names in capitals, runs of indentation), which a unigram mixture alone would flag.
    bigram_sample: at most this many tokens outside the candidate spans train the bigram model.
    candidate_margin: windows scoring within this margin below the threshold are re-checked with the
        bigram model too (structured noise such as mojibake can look text-like to a unigram model).
    split: which split to scan (noise is injected into "train").
    reference: optional shard set of trusted clean text (same tokenizer), e.g. a curated sample of the
        same source. Windows that uniform noise explains better than the reference's unigram
        distribution become extra seeds of the mixture; this finds heavy structured noise (mojibake at
        20%) whose tokens are frequent enough to look like part of "the corpus".
    reference_split: which split of ``reference`` to use.
    chunk_tokens: tokens read from the memmap at a time (bounds memory).
    model: checkpoint directory for the "model" detector.
    model_context: context length for the model's per-token loss (None = the model's block size).
    model_batch: windows per forward pass.
    device: torch device of the model.
    """

    detector: str = "mixture"
    window: int = 64
    stride: int = 16
    iterations: int = 3
    threshold: float | None = None
    robust_z: float = 6.0
    uniform_weight: float = 0.5
    smoothing: float = 0.01
    min_span: int = 32
    min_score: float = 8.0
    bigram: bool = True
    bigram_sample: int = 1 << 22
    candidate_margin: float = 1.5
    split: str = "train"
    reference: str | None = None
    reference_split: str = "train"
    chunk_tokens: int = 1 << 22
    model: str | None = None
    model_context: int | None = None
    model_batch: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise UsageError(f"unknown detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.detector == "model" and not self.model:
            raise UsageError("the model detector needs a checkpoint; pass --model CKPT")
        if self.model and self.detector != "model":
            self.detector = "model"  # --model implies the model detector
        if self.stride < 1 or self.window < self.stride or self.window % self.stride:
            raise UsageError(
                f"window={self.window} must be a positive multiple of stride={self.stride}; e.g. 64 and 16"
            )
        if self.iterations < 1:
            raise UsageError(f"iterations={self.iterations} must be >= 1")
        if not 0.0 < self.uniform_weight <= 1.0:
            raise UsageError(f"uniform_weight={self.uniform_weight} must lie in (0, 1]")
        if self.smoothing <= 0:
            raise UsageError(f"smoothing={self.smoothing} must be > 0")
        if self.robust_z <= 0:
            raise UsageError(f"robust_z={self.robust_z} must be > 0")
        if self.min_span < 1:
            raise UsageError(f"min_span={self.min_span} must be >= 1")
        if self.chunk_tokens < self.window:
            raise UsageError(f"chunk_tokens={self.chunk_tokens} must be >= window={self.window}")
        # whole windows per chunk, so window boundaries never straddle chunks
        self.chunk_tokens -= self.chunk_tokens % self.window
