"""Safe loading of PyTorch files (weights, checkpoints, model files) from untrusted bytes.

`load` is `torch.load(..., weights_only=True)` that turns every failure on the file's content
into one `CvpipeError` naming the file, why it was refused and what the caller says to do.
torch.load's failures on hostile bytes are not a documented set (a text file ends in
`KeyError: 101`, a truncated archive in a `RuntimeError` from the zip reader, an empty file in
`EOFError`), so everything but an `OSError` (missing file, permissions, I/O) is caught.
A file that needs Python objects unpickled is refused without PyTorch's advice to retry with
`weights_only=False`, which would run whatever code the file carries.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from cvpipe.errors import CvpipeError


def _unsafe_global(exc: Exception) -> str | None:
    """The Python object a weights-only load refused, or None when the file is just unreadable."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    found = re.search(r"unsupported GLOBAL (\S+?)(?: |$|\n)", str(exc))
    return found.group(1) if found else None


def load(path: str | Path, map_location: str | torch.device, fix: str) -> Any:
    """`torch.load(path, weights_only=True)`; a file that cannot be read safely raises a
    `CvpipeError` ending in `fix` (what to do, for the caller's kind of file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # see the module docstring
        unsafe = _unsafe_global(exc)
        if unsafe is None:
            reason = (
                "is not a readable PyTorch file (truncated, corrupted, or not made by torch.save)"
            )
        else:
            reason = (
                f"is not a plain state dict or checkpoint: it holds the Python object {unsafe}, "
                "and cvpipe will not unpickle it, since that can run any code the file carries. "
                "If you trust the file, convert it on a machine you trust with "
                "`torch.save(torch.load(f, weights_only=False).state_dict(), out)`"
            )
        raise CvpipeError(f"{path} {reason}; {fix}.") from None
