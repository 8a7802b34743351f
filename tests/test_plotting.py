"""Shared figure helpers: a row of axes; PNGs written atomically with the same bytes every time."""

from __future__ import annotations

from noisylm.plotting import figure_row, save_png


def _draw():
    fig, axes = figure_row(3, 2.0, 1.5)
    for i, ax in enumerate(axes):
        ax.plot([0, 1, 2], [0, i, 4])
    return fig, axes


def test_figure_row_has_the_requested_axes_and_size():
    fig, axes = _draw()
    assert len(axes) == 3
    assert tuple(fig.get_size_inches()) == (6.0, 1.5)


def test_save_png_is_byte_identical_without_a_version_stamp(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    save_png(_draw()[0], first, dpi=50)
    save_png(_draw()[0], second, dpi=50)
    data = first.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data == second.read_bytes()
    assert b"Software" not in data and b"matplotlib" not in data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary left behind
