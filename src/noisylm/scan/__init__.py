"""Find random noise in a corpus: spans that look like noise, what keeping them would cost (Prop. 1),
and a filtered copy of the shards.

`config` (`ScanConfig`) → `streaming`, `features`, `segmentation`, `bigram` → `detectors` (mixture,
unigram) / `model_detector` (a checkpoint's per-token loss) → `truth` (against injected spans) →
`pricing` (Prop. 1 at α̂) → `filtering` (``--filter``) → `pipeline` (`scan`: runs them, writes the
report). The validation grid on known truth is benchmarks/validate_scan.py.
"""

# Eager on purpose: with a lazy __getattr__, importing a submodule would set the package attribute of
# that name first. Modules are also named unlike the functions they export (`preparation` -> `prepare`).

from noisylm.scan.bigram import BigramModel, fit_bigram
from noisylm.scan.config import DETECTORS, ScanConfig
from noisylm.scan.detectors import Detection, detect_mixture, detect_unigram
from noisylm.scan.features import WindowFeatures, window_features
from noisylm.scan.filtering import write_filtered
from noisylm.scan.model_detector import detect_model, model_token_losses
from noisylm.scan.pipeline import default_out, scan
from noisylm.scan.pricing import K_GRID, predict_cost
from noisylm.scan.truth import span_metrics

__all__ = [
    "ScanConfig",
    "DETECTORS",
    "scan",
    "default_out",
    "WindowFeatures",
    "window_features",
    "BigramModel",
    "fit_bigram",
    "Detection",
    "detect_mixture",
    "detect_unigram",
    "detect_model",
    "model_token_losses",
    "span_metrics",
    "predict_cost",
    "K_GRID",
    "write_filtered",
]
