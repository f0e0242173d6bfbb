"""Stopping a training run early on request: SLURM's time-limit warning, preemption, `kill`.

SIGUSR1 (what `sbatch --signal=USR1@120` and `scancel --signal=USR1` send) and SIGTERM (what
SLURM sends at the time limit or on preemption, before SIGKILL) only set a flag. The training
loop looks at it after every optimisation step; every rank must agree to stop at the same step,
so under DDP the flag is summed over ranks. The loop then writes a checkpoint of the exact
position (mid-epoch included) and raises `Preempted`; the command line exits with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), which makes Snakemake retry the job, and the
retry resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import signal

import torch

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
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum  # only a flag: the loop finishes its step, then checkpoints

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self) -> bool:
        local = self.signal is not None
        if not self.env.distributed:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.env.device)
        return distributed.all_reduce_sum(flag, self.env).item() > 0

    def due(self, steps_done: int) -> bool:
        """Ask after a step. Alone, the flag is read every step; under DDP ranks compare notes
        every `every` steps, because agreeing costs a collective (and a device sync)."""
        if self.env.distributed and steps_done % self.every:
            return False
        return self.requested()

    def describe(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a signal on another rank"
