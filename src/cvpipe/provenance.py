"""Provenance: which code, data, software, container and machine produced a result.

Written next to every experiment's results (`provenance.json`) so that a number in a table can be
traced back to a git revision (with every uncommitted change named), the code fingerprint of the
stage as it ran (computed in the job from the cvpipe it imported, see `cvpipe.stagecode`), a data
set (manifest hash), a software stack and the container it ran in.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import torch
import torchvision

import cvpipe
from cvpipe import runtime, stagecode

# At most this many changed files are listed one by one (the count is always given).
MAX_CHANGED = 200


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            # --no-optional-locks: read-only, also in a checkout mounted read-only.
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip("\n")


def _changed_files(top: Path, cwd: Path) -> list[dict]:
    """Uncommitted changes, one entry per file: `{"path", "status"}` (git's two-letter code)."""
    out = _git("status", "--porcelain=v1", "-z", "--untracked-files=all", cwd=cwd) or ""
    entries, items = [], iter(out.split("\0"))
    for item in items:
        if not item:
            continue
        status, path = item[:2], item[3:]
        if "R" in status or "C" in status:
            next(items, None)  # the source path of a rename or copy follows
        entries.append({"path": path, "status": status.strip()})
    return entries


def git_state(path: Path | None = None, code_files: list[Path] | None = None) -> dict:
    """The git revision of the checkout holding the cvpipe code, and each uncommitted change.

    `describe` is `git describe --always --tags --dirty`; `changed` lists every modified, added,
    deleted or untracked file (ignored files are not changes); `code_changed` are those among
    `code_files`, the modules of the stage that ran. Outside a git checkout (or without git, e.g.
    in a container that cannot see the checkout's .git) every field is None.
    """
    here = path or stagecode.PACKAGE_DIR
    top = _git("rev-parse", "--show-toplevel", cwd=here)
    commit = _git("rev-parse", "HEAD", cwd=here)
    if top is None or commit is None:
        return {"commit": None, "describe": None, "dirty": None, "changed": None}
    changed = _changed_files(Path(top), here)
    code = {p.resolve().relative_to(Path(top).resolve()).as_posix() for p in code_files or []}
    return {
        "commit": commit,
        "describe": _git("describe", "--always", "--tags", "--dirty", cwd=here),
        "dirty": bool(changed),
        "changed_count": len(changed),
        "changed": changed[:MAX_CHANGED],
        "code_changed": sorted(c["path"] for c in changed if c["path"] in code),
    }


def code_state(commands: list[str]) -> dict:
    """The code fingerprint of `python -m cvpipe <commands>` in this process's cvpipe."""
    hashes = stagecode.stage_hashes(commands)
    return {
        "stage": " ".join(commands),
        "fingerprint": stagecode.fingerprint(hashes),
        "modules": {m: digest[: stagecode.SHORT] for m, digest in sorted(hashes.items())},
        "package": str(stagecode.PACKAGE_DIR),
    }


def _image_digest(uri: str | None, labels: dict) -> str | None:
    """The image's sha256 where it can be read: pinned in the URI, or a label of the image."""
    match = re.search(r"@(sha256:[0-9a-f]{64})", uri or "")
    if match:
        return match.group(1)
    for key, value in labels.items():
        if "digest" in key.lower() and str(value).startswith("sha256:"):
            return str(value)
    return None


def container_info(labels_file: Path = Path("/.singularity.d/labels.json")) -> dict:
    """Which container this process runs in, as far as it can tell.

    `uri` is the image the workflow ran the job in (`CVPIPE_CONTAINER`, set by the workflow's
    job prefix under `--sdm apptainer`); `runtime`, `image` and `labels` come from inside:
    Apptainer/Singularity set `APPTAINER_CONTAINER`/`SINGULARITY_CONTAINER` (the image file) and
    keep the image's labels in /.singularity.d/labels.json; Docker leaves /.dockerenv.
    """
    uri = os.environ.get("CVPIPE_CONTAINER") or None
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if os.environ.get("APPTAINER_CONTAINER"):
        runtime = "apptainer"
    elif os.environ.get("SINGULARITY_CONTAINER"):
        runtime = "singularity"
    elif Path("/.dockerenv").exists():
        runtime = "docker"
    else:
        runtime = None
    try:
        labels = json.loads(labels_file.read_text()) if runtime else {}
    except (OSError, ValueError):
        labels = {}
    return {
        "uri": uri,
        "runtime": runtime,
        "image": image or None,
        "name": os.environ.get("APPTAINER_NAME") or os.environ.get("SINGULARITY_NAME") or None,
        "digest": _image_digest(uri, labels),
        "labels": labels,
    }


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
        # The imported package's own version: jobs import cvpipe from the checkout's src/,
        # which has no installed metadata in a container.
        "cvpipe": cvpipe.__version__,
    }


def device_info(device: torch.device) -> dict:
    """Device type and name, and how many CUDA devices this process sees."""
    return {
        "type": device.type,
        "name": runtime.device_name(device),
        "cuda_devices_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def collect(stage: str, config: dict, manifest_sha256: str, device: torch.device, **extra) -> dict:
    """The provenance record of `stage`; `extra` adds stage-specific entries (the batch layout)."""
    code = code_state([stage])
    files = stagecode.module_files(stagecode.stage_hashes([stage]))
    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(code_files=files),
        "code": code,
        "container": container_info(),
        "data": {"manifest_sha256": manifest_sha256},
        "config": config,
        "versions": versions(),
        "device": device_info(device),
        "host": socket.gethostname(),
        "command": sys.argv,
        **extra,
    }
