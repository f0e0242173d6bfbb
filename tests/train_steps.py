"""A few of cvpipe's real training steps on one fixed batch, on any device.

The precision, memory-format and compile checks of `test_train.py` (CPU) and `test_gpu.py`
(CUDA) share it: the parts come from `build_parts`, the steps from `train_one_epoch`, so the
autocast, GradScaler and optimizer under test are the ones training uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from cvpipe.data import read_stats
from cvpipe.distributed import DistEnv
from cvpipe.epoch import train_one_epoch
from cvpipe.parts import Parts, build_parts
from cvpipe.train import TrainConfig

# Many epochs so that the cosine schedule keeps the learning rate up over the few steps taken.
SETTINGS = {"model": "resnet18", "image_size": 32, "batch_size": 8, "epochs": 20}


@dataclass
class Step:
    loss: float
    scale: float  # the GradScaler's scale after the step (1.0 when it is disabled)
    weights_changed: bool


def build(cache_dir: Path, device: str, **settings) -> tuple[Parts, DistEnv]:
    cfg = TrainConfig.from_dict({**SETTINGS, **settings})
    env = DistEnv(device=torch.device(device))
    return build_parts(cfg, read_stats(cache_dir), cache_dir, env), env


def fit_steps(parts: Parts, env: DistEnv, steps: int, overflow_at: int | None = None) -> list[Step]:
    """`steps` steps on the first training batch; at step `overflow_at` the loss is multiplied
    by 1e38, so that its scaled gradients overflow."""
    images, labels = next(iter(parts.train_loader))
    done = []
    for i in range(steps):
        factor = 1e38 if i == overflow_at else 1.0

        def criterion(logits, target, factor=factor):
            return parts.criterion(logits, target) * factor

        before = [p.detach().clone() for p in parts.model.parameters()]
        # Without augmentation: every step sees the same inputs.
        fixed = dataclasses.replace(
            parts, criterion=criterion, train_transform=parts.eval_transform
        )
        fit = train_one_epoch(fixed, [(images, labels)], env)
        changed = any(
            not torch.equal(a, b) for a, b in zip(before, parts.model.parameters(), strict=True)
        )
        done.append(Step(fit["loss"] / factor, parts.scaler.get_scale(), changed))
    return done


def assert_learns(steps: list[Step]) -> None:
    losses = [s.loss for s in steps]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    assert all(s.weights_changed for s in steps), steps
