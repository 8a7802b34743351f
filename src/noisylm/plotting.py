"""Matplotlib helpers shared by every module that draws a figure (report, theory, scan, stats, probe):
a row of axes, and a PNG written atomically with no version stamp in it, so that the same inputs give
the same bytes."""

from __future__ import annotations

import os
from typing import Any

from noisylm.artifacts import atomic_path


def figure_row(ncols: int = 1, width: float = 5.2, height: float = 3.6) -> tuple[Any, list[Any]]:
    """A figure with ``ncols`` axes side by side (each ``width`` × ``height`` inches), without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically and without the matplotlib version in its metadata."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
