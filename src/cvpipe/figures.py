"""What the figure-writing stages (plots, compare) share: a headless matplotlib, CSV rows in,
figures written atomically."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from cvpipe import atomic

__all__ = ["plt", "read_csv", "save_figure"]


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_figure(fig: plt.Figure, path: str | Path, dpi: int) -> None:
    """Save atomically and close the figure."""
    suffix = Path(path).suffix
    with atomic.atomic_path(path, suffix=suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix.lstrip("."))
    plt.close(fig)
