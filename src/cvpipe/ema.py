"""An exponential moving average (EMA) of the trained weights, updated after every optimizer step.

`EmaModel` is torch's `AveragedModel` (its copy of the model, and its state dict: `module.*` and
the update count `n_averaged`) with the update of `get_ema_multi_avg_fn` and `use_buffers=True`,
run without a host-GPU sync per step. Parameters *and* buffers are averaged: BatchNorm's running
mean and variance follow the EMA of the weights they were measured with, instead of being the
raw model's. The integer `num_batches_tracked` is averaged and truncated too; BatchNorm only
reads it when its `momentum` is None, which torchvision's models never set.

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

import itertools

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
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.module.requires_grad_(False)

    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model` (the plain model the optimizer steps)."""
        self.update_parameters(model)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """AveragedModel's update with `multi_avg_fn=get_ema_multi_avg_fn(decay_t)`: the first
        copies the model, later ones average parameters and buffers with the warmed-up decay.
        Done here rather than by AveragedModel, which hands the averaging function its CPU
        update count copied to the GPU: a blocking copy, so a host-GPU sync every step."""
        updates = int(self.n_averaged)  # on the CPU: no sync
        average = get_ema_multi_avg_fn(warmup_decay(self.decay, updates) if updates else 0.0)
        # torch's foreach lerp takes one device and dtype at a time (BatchNorm counts are int).
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        pairs = zip(
            itertools.chain(self.module.parameters(), self.module.buffers()),
            itertools.chain(model.parameters(), model.buffers()),
            strict=True,
        )
        for averaged, current in pairs:
            group = groups.setdefault((averaged.device, averaged.dtype), ([], []))
            group[0].append(averaged.detach())
            group[1].append(current.detach())
        for averaged_group, current_group in groups.values():
            average(averaged_group, current_group, updates)
        self.n_averaged += 1

    @torch.no_grad()
    def sync_buffers(self, env: DistEnv) -> None:
        """Every rank takes rank 0's averaged buffers (a collective call; nothing without DDP)."""
        if env.distributed:
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)
