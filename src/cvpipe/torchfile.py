"""Safe loading of PyTorch files (weights, checkpoints, model files) from untrusted bytes.

`load` is `torch.load(..., weights_only=True)` that turns every failure on the file's content
into one `CvpipeError` naming the file, why it was refused and what the caller says to do.
torch.load's failures on hostile bytes are not a documented set (a text file ends in
`KeyError: 101`, a truncated archive in a `RuntimeError` from the zip reader, an empty file in
`EOFError`), so everything but an `OSError` (missing file, permissions, I/O) is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cvpipe.errors import CvpipeError


def load(path: str | Path, map_location: str | torch.device, fix: str) -> Any:
    """`torch.load(path, weights_only=True)`; a file that cannot be read safely raises a
    `CvpipeError` ending in `fix` (what to do, for the caller's kind of file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception:  # see the module docstring
        reason = "is not a readable PyTorch file (truncated, corrupted, or not made by torch.save)"
        raise CvpipeError(f"{path} {reason}; {fix}.") from None
