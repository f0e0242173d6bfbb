"""Training checkpoints: what they hold, atomic saving, safe loading, and RNG state capture.

A checkpoint holds the (unwrapped) model, optimizer, LR scheduler and GradScaler states, the
epoch it completed, the best validation result so far, the per-epoch history, every RNG state
(Python, NumPy, torch CPU and CUDA) and the resolved config and data identity it was trained
with. Only tensors, numbers, strings, lists and dicts are stored, so it loads with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvpipe import atomic

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        # Only a process that used CUDA has CUDA states worth keeping; asking otherwise would
        # initialise CUDA in a CPU run (`gpus: 0` on a GPU machine).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only where the devices exist)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())  # a file loaded with another map_location
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][: torch.cuda.device_count()]])


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
    with atomic.atomic_path(path, suffix=".pt") as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or model file safely (`weights_only=True`)."""
    return torch.load(path, map_location=map_location, weights_only=True)
