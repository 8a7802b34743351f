"""Find random noise in a corpus: spans that look like noise, what keeping them would cost (Prop. 1),
and a filtered copy of the shards.
"""

# Eager on purpose: a lazy __getattr__ would be shadowed by the submodule of the same name
# (`noisylm.data.preparation` the function, not the module) once that submodule is imported.

from noisylm.scan.pipeline import DETECTORS, ScanConfig, scan, validate

__all__ = [
    "ScanConfig",
    "scan",
    "validate",
    "DETECTORS",
]
