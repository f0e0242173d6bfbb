"""Process-group set-up for DDP, detected from torchrun's environment, and rank-aware helpers.

One code path for every case: a plain `python`/`cvpipe train` run is a world of size 1 with no
process group; under `torchrun`, RANK / WORLD_SIZE / LOCAL_RANK select the device and the backend
(`nccl` on CUDA, `gloo` on CPU). Cross-rank reductions are no-ops in a world of one.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto` -> this rank's CUDA device if there is one, else CPU; `cpu` forces the CPU.

    `cuda` without a visible CUDA device falls back to the CPU with a warning instead of failing:
    a GPU experiment's jobs ask for `cuda` (cvpipe.launch), and the same workflow must still run
    where the allocator's GPUs are only counted (CVPIPE_GPU_COUNT on a CPU machine, the tests).
    """
    if preference == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if preference == "cuda":
            log.warning("device cuda asked for, but no CUDA device is visible: using the CPU")
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _die_with_launcher() -> None:
    """Under torchrun, exit when the launcher dies, even by SIGKILL.

    torchrun starts each worker in a session of its own, so killing the launcher (the OOM killer,
    `kill -9` on the job) would leave the workers training on as orphans, writing the same files
    as the rerun that follows. PR_SET_PDEATHSIG has the kernel kill them with their parent.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call above
        os._exit(1)


def init(device_preference: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Read torchrun's variables, pick the device and, for world size > 1, join the group."""
    _die_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistEnv(rank, world_size, local_rank, device)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op for a world of one) and return it."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def host_group(env: DistEnv) -> dist.ProcessGroup | None:
    """A gloo group over the same ranks, for small flags that the host reads (None alone).

    Its collectives run on CPU tensors, so reading a result never waits for the GPU's queue as
    `.item()` on a CUDA (NCCL) tensor does. A collective call: every rank must make it.
    """
    if not env.distributed:
        return None
    group = dist.new_group(backend="gloo")
    assert isinstance(group, dist.ProcessGroup), group  # -100 only for non-members
    return group


def gather_objects(obj, env: DistEnv) -> list:
    """`obj` of every rank, in rank order (a collective; `[obj]` for a world of one)."""
    if not env.distributed:
        return [obj]
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for a world of one)."""
    if env.distributed:
        dist.barrier()
