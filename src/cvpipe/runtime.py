"""How this process runs: its device's name, its CPU threads and its autocast precision.

Shared by the stages that run a model (train, evaluate) and by the provenance record, so that
the AMP policy, the thread split under torchrun and the device name are each decided once.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable

import torch


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `amp` on `device`; None means full fp32.

    `auto` is bf16 on CUDA devices that support it, else fp16 (with a GradScaler), and off on the
    CPU, where bf16 autocast works but runs far slower than fp32 (it is for tests only).
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if _native_bf16() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _native_bf16() -> bool:
    """Does the current CUDA device do bf16 in hardware (Ampere and newer)?

    Plain `is_bf16_supported()` also counts emulation, which a V100 or T4 offers at a fraction
    of fp16's speed; `including_emulation` exists since torch 2.3 (older: the plain query).
    """
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def autocast_factory(
    device: torch.device, dtype: torch.dtype | None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A function giving a fresh autocast context to `dtype` on `device` per call; with no
    dtype, a `nullcontext` (one code path whether AMP is on or off)."""

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    return autocast


def set_threads(threads: int | None, per_local_process: bool = False) -> None:
    """Give torch `threads` CPU threads; None or 0 leaves torch's default.

    With `per_local_process`, `threads` is the job's share of the machine and the processes
    torchrun started on it (`LOCAL_WORLD_SIZE`, 1 without torchrun) split it evenly.
    """
    if not threads:
        return
    if per_local_process:
        threads = max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's (the machine type where Python cannot
    tell the processor, as on many Linux systems)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return name or platform.machine()
