"""`make demo`'s probe step."""

from __future__ import annotations

from pathlib import Path

from noisylm.probing.protocol.baseline import LOGREG_LABEL
from noisylm.probing.protocol.config import ProbeConfig
from noisylm.probing.protocol.phases import probe
from noisylm.probing.protocol.tables import paired_line


def demo_probe(out_dir: str | Path) -> Path:
    """MiniLM features of a small WordNet-gloss subset (26 classes), linear and MLP heads, CE vs CE + LGM.

    Re-uses the feature cache in ``out_dir/features`` when present; the probe output in
    ``out_dir/probe`` is replaced. Returns the probe directory.
    """
    from noisylm.probing.features import extract

    out_dir = Path(out_dir)
    cache = out_dir / "features-minilm-wordnet"
    if not (cache / "meta.json").exists():
        print(f"   extracting MiniLM features of 1,200 + 400 WordNet glosses into {cache}", flush=True)
        extract("minilm", "wordnet", cache, overwrite=True, max_train=1200, max_test=400, progress=True)
    config = ProbeConfig(
        heads=("linear", "mlp"), losses=("ce", "lgm"), preset="quick", seeds=3, figure6=True, device="cpu"
    )
    result_dir = out_dir / "probe"
    summary = probe([cache], result_dir, config, overwrite=True)
    for row in summary["rows"]:
        print(f"   {row['head']:>6} {row['loss']:>3}: test accuracy {row['mean']:.2f} ± {row['std']:.2f}%")
        if row["paired"]:
            print(f"          {paired_line(row)}")
    for row in summary["logreg"]:
        print(f"   {LOGREG_LABEL} (C={row['C']:g}): test accuracy {row['mean']:.2f}%")
    print(f"   tables: {result_dir / 'table_main.md'}, figure: {result_dir / 'figure6.png'}")
    return result_dir
