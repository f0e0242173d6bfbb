"""Training checkpoints: what they hold, how a run resumes from one, atomic saving, safe loading.

`training_state` is the schema of `last.pt`: the (unwrapped) model, optimizer, LR scheduler and
GradScaler states, the EMA of the weights with its update count (key `ema`, only where the run
keeps one), the epoch it completed (or, with `progress`, how far into it a stopped run got), the
best validation result so far, the per-epoch history, every RNG state of every rank
(Python, NumPy, torch CPU and CUDA, the augmentation generator) and the identity (config, data
and runtime) it was trained with. `try_resume` loads it back only for the same identity, and
`restore` puts it into a run's parts. Only tensors, numbers, strings, lists and dicts are
stored, so every file loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from cvpipe import atomic, distributed, torchfile
from cvpipe.distributed import DistEnv
from cvpipe.errors import CvpipeError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as weights_only-loadable values."""
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple (legacy=True is the default)
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


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (what dominates the size of its file)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact. A file
    that will not fit in the free space is refused before writing, and a disk that fills up
    while writing is reported the same way (file, bytes needed, bytes free)."""
    state = {"format_version": FORMAT_VERSION, **state}
    needed = _tensor_bytes(state) + 2**20  # the pickled rest and the zip records: well under 1 MiB
    short = atomic.no_space(path, needed)
    if short:
        raise CvpipeError(short)
    try:
        with atomic.atomic_path(path, suffix=".pt") as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:
        if not atomic.is_disk_full(exc):
            raise
        # atomic_path has removed the partial file by now, so the free space is the real one.
        raise CvpipeError(atomic.space_message(path, needed)) from None


def load(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    fix: str = "rerun the stage that wrote it, or delete it",
) -> dict[str, Any]:
    """Load a checkpoint or model file safely (`weights_only=True`); a file that cannot be read
    is a `CvpipeError` naming it and ending in `fix` (what to do)."""
    return torchfile.load(path, map_location, fix)


@dataclass
class EpochProgress:
    """How far an epoch got: batches done, running train sums (over all ranks), seconds."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0


class Resumable(Protocol):
    """What a training state is taken from and restored into (`cvpipe.parts.Parts`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    aug_generator: torch.Generator

    @property
    def ema(self) -> nn.Module | None:  # `cvpipe.ema.EmaModel` where the run keeps one
        ...


def training_state(
    parts: Resumable,
    epoch: int,
    history: list,
    best: dict | None,
    identity: dict,
    config: dict[str, Any],
    env: DistEnv,
    progress: EpochProgress | None = None,
) -> dict:
    """Everything `last.pt` holds to continue as if never stopped: after `epoch` (0-based)
    completed, or, with `progress`, in the middle of it. A collective call (RNG states of every
    rank are gathered), so every rank must make it."""
    rng = {"process": rng_state(), "augment": parts.aug_generator.get_state()}
    # Only a run with an EMA has the key, so a run without one writes what it always did.
    ema = {} if parts.ema is None else {"ema": parts.ema.state_dict()}
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "epoch": epoch,
        "progress": dataclasses.asdict(progress) if progress else None,
        "history": history,
        "best": best,
        "rng_by_rank": distributed.gather_objects(rng, env),
        "identity": identity,
        "config": config,
        **ema,
    }


def restore(parts: Resumable, state: dict, env: DistEnv) -> None:
    """Load a `training_state` back into the parts and this process's RNGs."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    if parts.ema is not None:  # the identity (its ema_decay) says the checkpoint has one
        parts.ema.load_state_dict(state["ema"])
    states = state["rng_by_rank"]
    if len(states) != env.world_size and state.get("progress"):
        log.warning(
            "the checkpoint was made by %d process(es), this run has %d: the interrupted epoch "
            "continues with other random draws than an uninterrupted run would use",
            len(states), env.world_size,
        )  # fmt: skip
    mine = states[env.rank] if len(states) == env.world_size else states[0]
    set_rng_state(mine["process"])
    parts.aug_generator.set_state(mine["augment"].cpu())


def _load_or_set_aside(path: Path) -> dict | None:
    """`last.pt`'s content; None where there is none, or where it cannot be read (truncated by a
    crash or a full disk, say): then it is moved to `last.pt.corrupt` and logged, so a rerun
    starts afresh instead of failing on the same file forever."""
    if not path.exists():
        return None
    aside = path.with_name(path.name + ".corrupt")
    try:
        # Always to the CPU: RNG states are restored through NumPy and CPU generators, and
        # `restore` moves the rest to the device (a CUDA-mapped load failed on every GPU).
        return load(path, "cpu", fix=f"it is moved to {aside} and training starts from scratch")
    except FileNotFoundError:  # another rank set it aside first
        return None
    except CvpipeError as exc:
        with contextlib.suppress(FileNotFoundError):  # every rank tries; the first one moves it
            os.replace(path, aside)
        log.warning("not resuming: %s", exc)
        return None


def try_resume(path: Path, identity: dict, epochs: int) -> dict | None:
    """The `training_state` in `path`, or None where there is none, it cannot be read (set aside
    as `<name>.corrupt`) or it was made with another identity (logged: training then starts
    from scratch). `epochs` is only for the log line."""
    state = _load_or_set_aside(path)
    if state is None:
        return None
    saved = state.get("identity") or {}
    was, now = saved.get("runtime"), identity["runtime"]
    if was and was != now and {**saved, "runtime": now} == identity:
        log.warning(
            "not resuming from %s: it was trained on %s with amp %s, this run is on %s with amp %s"
            " (random-generator and GradScaler states do not carry over between them); "
            "training starts from scratch and will overwrite it",
            path, was["device_type"], was["amp"], now["device_type"], now["amp"],
        )  # fmt: skip
        return None
    if saved != identity:
        log.warning(
            "not resuming from %s: it was made with a different config or data set; "
            "training starts from scratch and will overwrite it",
            path,
        )
        return None
    if state.get("progress"):
        log.info(
            "resuming from %s (epoch %d of %d, after %d batches)",
            path, state["epoch"] + 1, epochs, state["progress"]["batches"],
        )  # fmt: skip
    else:
        log.info("resuming from %s (completed epoch %d of %d)", path, state["epoch"] + 1, epochs)
    return state
