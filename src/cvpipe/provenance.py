"""Provenance: which code, data, software and machine produced a result.

Written next to every experiment's results (`provenance.json`) so that a number in a table can be
traced back to a git commit, a data set (manifest hash) and a software stack.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import torch
import torchvision


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(path: Path | None = None) -> dict:
    """Commit and dirty flag of the git checkout holding the cvpipe code (None outside git)."""
    here = path or Path(__file__).resolve().parent
    commit = _git("rev-parse", "HEAD", cwd=here)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=here)
    return {"commit": commit, "dirty": bool(status)}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of the software stack that shapes the results."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "opencv": cv2.__version__,
        "numpy": _version("numpy"),
        "snakemake": _version("snakemake"),
        "cvpipe": _version("cvpipe"),
    }


def device_info(device: torch.device) -> dict:
    """Device type and name, and how many CUDA devices this process sees."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "type": device.type,
        "name": name or platform.machine(),
        "cuda_devices_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def collect(config: dict, manifest_sha256: str, device: torch.device, **extra) -> dict:
    """The provenance record; `extra` adds stage-specific entries (e.g. the batch layout)."""
    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "data": {"manifest_sha256": manifest_sha256},
        "config": config,
        "versions": versions(),
        "device": device_info(device),
        "host": socket.gethostname(),
        "command": sys.argv,
        **extra,
    }
