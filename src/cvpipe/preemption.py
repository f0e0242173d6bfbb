"""Stopping a training run early on request: SLURM's time-limit warning, preemption, `kill`.

SIGUSR1 (what `sbatch --signal=USR1@120` and `scancel --signal=USR1` send) and SIGTERM (what
SLURM sends at the time limit or on preemption, before SIGKILL) only set a flag. The training
loop looks at it after every optimisation step; every rank must agree to stop at the same step,
so under DDP the flag is summed over ranks, on the CPU (a gloo group beside NCCL) and
asynchronously, so that the check never makes the host wait for the GPU. The loop then writes
a checkpoint of the exact position (mid-epoch included) and raises `Preempted`; the command line
exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), which makes Snakemake retry the job,
and the retry resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

from cvpipe import distributed
from cvpipe.distributed import DistEnv
from cvpipe.errors import EXIT_PREEMPTED, Preempted

__all__ = ["EXIT_PREEMPTED", "Preempted", "StopRequest"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Remembers a stop signal; `requested()` is True on every rank once any rank got one."""

    def __init__(self, env: DistEnv, every: int = 10) -> None:
        self.env = env
        self.every = every
        self.signal: int | None = None
        self._previous: dict[int, signal._HANDLER] = {}
        self._group = distributed.host_group(env)  # collective: every rank builds a StopRequest
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum  # only a flag: the loop finishes its step, then checkpoints

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self._collect()  # every rank started it, so it completes; none is left in flight

    def _flag(self) -> torch.Tensor:
        return torch.tensor([1.0 if self.signal is not None else 0.0])

    def _collect(self) -> bool:
        """The result of the all-reduce started at the previous check (False if none)."""
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return flag.item() > 0

    def requested(self) -> bool:
        """Did any rank get a signal? Blocks on the other ranks' hosts, never on a GPU."""
        if not self.env.distributed:
            return self.signal is not None
        flag = self._flag()
        dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=self._group)
        return flag.item() > 0

    def due(self, steps_done: int) -> bool:
        """Ask after a step. Alone, the flag is read every step. Under DDP, every `every` steps
        each rank reads the all-reduce it started at the previous check (done by now, so no
        waiting) and starts the next one: all ranks stop at the same step, at most
        2 * `every` steps after the signal."""
        if not self.env.distributed:
            return self.signal is not None
        if steps_done % self.every:
            return False
        decided = self._collect()
        flag = self._flag()
        work = dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=self._group, async_op=True)
        self._pending = (work, flag)
        return decided

    def describe(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a signal on another rank"
