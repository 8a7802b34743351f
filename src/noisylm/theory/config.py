"""Options of `noisylm theory` (`TheoryConfig`), shared by the measurement, Lemma 1 and the section."""

from __future__ import annotations

import math
from dataclasses import dataclass

from noisylm.errors import UsageError


@dataclass
class TheoryConfig:
    """Options of `theory`.

    k: use this k for every run instead of estimating it (Prop. 1's k; must be > 0).
    k_iter: estimate k at this iteration (a checkpoint both runs kept); default: the earliest common
        checkpoint at which k is defined (ε > 0 and ε/k > 0).
    eval_windows: windows per eval set (clean val, noise) and checkpoint; the same windows for every model.
    lemma1_windows: windows drawn from each mixed training shard set for Lemma 1.
    lemma1_max_tokens: build the other placement (a temporary re-injection) only for clean corpora up to
        this many training tokens; bigger corpora get Lemma 1 for the sweep's own placement only.
    batch_size: windows per forward pass.
    device: torch device for the evaluations ("cpu", "cuda", "mps").
    threads: torch intra-op threads on CPU during `theory` (None: PyTorch's default).
    seed: seeds the choice of windows.
    """

    k: float | None = None
    k_iter: int | None = None
    eval_windows: int = 64
    lemma1_windows: int = 64
    lemma1_max_tokens: int = 50_000_000
    batch_size: int = 16
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k is not None and not (self.k > 0 and math.isfinite(self.k)):
            raise UsageError(f"--k {self.k} must be a positive number (Prop. 1's k); omit it to estimate k")
        for name in ("eval_windows", "lemma1_windows", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.lemma1_max_tokens < 0:
            raise UsageError("--lemma1-max-tokens must be >= 0")
