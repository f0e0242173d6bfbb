"""What the figure-writing stages (plots, compare) share: a headless matplotlib, CSV rows in,
figures written atomically."""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

from cvpipe import atomic

__all__ = ["class_labels", "plt", "read_csv", "save_figure"]

log = logging.getLogger(__name__)
# Fonts with the CJK glyphs that the default DejaVu Sans lacks, tried in order when installed.
GLYPH_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR")


def _has_glyphs(family: str, names: Sequence[str]) -> bool:
    path = font_manager.findfont(font_manager.FontProperties(family=family))
    charmap = FT2Font(path).get_charmap()
    return all(ord(c) in charmap for name in names for c in name if not c.isspace())


def class_labels(classes: Sequence[str]) -> list[str]:
    """What a figure draws for each class: its name, or its number (see `_class_labels`)."""
    return list(_class_labels(tuple(classes)))


@functools.cache  # once per set of classes: one warning, however many figures
def _class_labels(classes: tuple[str, ...]) -> tuple[str, ...]:
    """Names to draw for `classes`: the names if a font has their glyphs (switching to an
    installed Noto Sans CJK if needed), else the class numbers, with one warning that maps them
    to the names (otherwise matplotlib draws empty boxes)."""
    if _has_glyphs(plt.rcParams["font.sans-serif"][0], classes):
        return classes
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for family in (f for f in GLYPH_FONTS if f in installed):
        if _has_glyphs(family, classes):
            plt.rcParams["font.sans-serif"] = [family, *plt.rcParams["font.sans-serif"]]
            return classes
    legend = ", ".join(f"{i} = {name}" for i, name in enumerate(classes))
    log.warning(
        "no installed font draws every class name, so the figures number the classes (%s): "
        "install a Noto Sans CJK font (e.g. fonts-noto-cjk) to see the names.",
        legend,
    )
    return tuple(str(i) for i in range(len(classes)))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_figure(fig: plt.Figure, path: str | Path, dpi: int) -> None:
    """Save atomically and close the figure."""
    suffix = Path(path).suffix
    with atomic.atomic_path(path, suffix=suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix.lstrip("."))
    plt.close(fig)
