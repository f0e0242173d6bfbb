"""One epoch of training: the steps over the training batches, and validation of a split.

`train_one_epoch` is the step loop (Mixup/CutMix where configured, autocast forward, GradScaler
backward, optimizer and per-step LR schedule, which waits out a step the GradScaler skipped, then
the EMA update where configured), summing loss and accuracy on the device and over DDP ranks;
`evaluate_split` computes loss, accuracy and macro-F1 (`cvpipe.metrics`) the same way, of the
model or of another (the EMA). Both take the run's `Parts` (`cvpipe.parts`). `epoch_seed` is what
makes every epoch's random draws replayable, so that a resumed run continues exactly
(`cvpipe.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader

from cvpipe import distributed, metrics
from cvpipe.checkpoint import EpochProgress
from cvpipe.distributed import DistEnv
from cvpipe.parts import Parts


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed for everything random in one epoch on one rank (so resume replays it exactly)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def train_one_epoch(
    parts: Parts,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    env: DistEnv,
    progress: EpochProgress | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> dict[str, float]:
    """Train `parts.wrapped` on `batches` (uint8 images, through `parts.train_transform`);
    returns loss and accuracy over all ranks, and whether it stopped. With Mixup/CutMix
    (`parts.mix`) the loss is against the soft targets, the accuracy against each mixed image's
    dominant label (the one with the larger share).

    `progress` carries an interrupted epoch's sums in and the new position out;
    `should_stop(batches_done)` is asked after every step (it must agree across ranks).
    """
    progress = progress if progress is not None else EpochProgress()
    parts.wrapped.train()
    # Summed on the device, so the loop never waits for the GPU; read once at the end. Sums
    # carried over from an interrupted epoch are global, so only rank 0 starts from them.
    start = [progress.loss_sum, progress.correct, progress.count] if env.is_main else [0.0] * 3
    sums = torch.tensor(start, dtype=torch.float64, device=env.device)
    stopped = False
    scale = parts.scaler.get_scale()
    for images, labels in batches:
        images = images.to(env.device, non_blocking=True)
        labels = labels.to(env.device, non_blocking=True)
        x = parts.train_transform(images)
        # Mixup/CutMix: soft targets, and accuracy counted against each image's dominant label.
        targets = labels
        if parts.mix is not None:
            x, targets = parts.mix(x, labels)
            labels = targets.argmax(1)
        with parts.autocast():
            logits = parts.wrapped(x)
            loss = parts.criterion(logits, targets)
        scale = _optimizer_step(parts, loss, scale)
        sums[0] += loss.detach().double() * labels.numel()
        sums[1] += (logits.argmax(1) == labels).sum()
        sums[2] += labels.numel()
        progress.batches += 1
        if should_stop is not None and should_stop(progress.batches):
            stopped = True
            break
    loss_total, correct_total, count_total = distributed.all_reduce_sum(sums, env).tolist()
    progress.loss_sum, progress.correct, progress.count = loss_total, correct_total, count_total
    count_total = max(count_total, 1)
    return {
        "loss": loss_total / count_total,
        "acc": correct_total / count_total,
        "stopped": stopped,
    }


def _optimizer_step(parts: Parts, loss: torch.Tensor, scale: float) -> float:
    """Backward, optimizer, LR schedule and EMA steps; returns the GradScaler's new scale
    (`scale` is its scale before this step)."""
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    # A lower scale means the GradScaler found inf/NaN gradients and skipped the optimizer
    # step: the schedule waits too (else PyTorch warns of an LR step before any optimizer
    # step). Disabled, the scale is always 1.0, so the schedule steps every time.
    new_scale = parts.scaler.get_scale()  # a GPU sync with fp16 only
    if new_scale >= scale:
        parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(parts.model)
    return new_scale


@torch.no_grad()
def evaluate_split(
    parts: Parts, loader: DataLoader, env: DistEnv, model: torch.nn.Module | None = None
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of `model` (default: `parts.wrapped`) on a split (through
    `parts.eval_transform`), reduced over ranks (every rank gets the same)."""
    num_classes = parts.num_classes
    model = parts.wrapped if model is None else model
    model.eval()
    loss_sum = torch.zeros(1, dtype=torch.float64, device=env.device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=env.device)
    for images, labels in loader:
        images = images.to(env.device, non_blocking=True)
        labels = labels.to(env.device, non_blocking=True)
        with parts.autocast():
            logits = model(parts.eval_transform(images))
        loss_sum += parts.criterion(logits.float(), labels).double() * labels.numel()
        cm += metrics.torch_confusion(labels, logits.argmax(1), num_classes)
    distributed.all_reduce_sum(loss_sum, env)
    distributed.all_reduce_sum(cm, env)
    return {"loss": loss_sum.item() / max(cm.sum().item(), 1), **metrics.summarize_confusion(cm)}
