"""An exponential moving average (EMA) of the trained weights, updated after every optimizer step.

`EmaModel` is torch's `AveragedModel` with the EMA update of `get_ema_multi_avg_fn` and
`use_buffers=True`: parameters *and* buffers are averaged (BatchNorm's running mean and variance
follow the EMA of the weights they were measured with, instead of being the raw model's). The
integer `num_batches_tracked` is averaged and truncated too; BatchNorm only reads it when its
`momentum` is None, which torchvision's models never set.

The decay warms up as in TensorFlow's `ExponentialMovingAverage(num_updates=...)` and timm's
`ModelEmaV2`/`V3`: after `t` updates it is `min(decay, (1 + t) / (10 + t))`, so early, random
weights are forgotten quickly (the first update copies the model). `t` is `n_averaged`, a buffer
kept on the CPU (reading it costs no GPU sync) and saved in the state dict, so a resumed run
continues with the same decay.

The EMA wraps the plain model (not the DDP or compiled wrapper). Every DDP rank updates it
identically from identical parameters, but each rank's BatchNorm statistics come from its own
share of the batch: `sync_buffers` makes every rank hold rank 0's before the EMA is evaluated
(rank 0's copy is the one checkpointed).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cvpipe.distributed import DistEnv
from cvpipe.errors import CvpipeError


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of the update after `updates` earlier ones: `min(decay, (1 + t) / (10 + t))`."""
    return min(decay, (1 + updates) / (10 + updates))


class EmaModel(AveragedModel):
    """The EMA of a model's parameters and buffers; `.module` is a plain copy of the model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise CvpipeError(f"ema_decay must be null (off) or in [0, 1), not {decay!r}")
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.decay = decay
        self._decay_now = decay
        self.module.requires_grad_(False)

    def _average(
        self,
        averaged: list[torch.Tensor] | tuple[torch.Tensor, ...],
        current: list[torch.Tensor] | tuple[torch.Tensor, ...],
        n_averaged: torch.Tensor | int,
    ) -> None:
        get_ema_multi_avg_fn(self._decay_now)(averaged, current, n_averaged)

    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model` (the plain model the optimizer steps)."""
        self._decay_now = warmup_decay(self.decay, int(self.n_averaged))
        self.update_parameters(model)

    @torch.no_grad()
    def sync_buffers(self, env: DistEnv) -> None:
        """Every rank takes rank 0's averaged buffers (a collective call; nothing without DDP)."""
        if env.distributed:
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)
