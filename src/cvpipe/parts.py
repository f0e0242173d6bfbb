"""The parts of a training run, assembled once: loaders, model, optimisation, precision, transforms.

`build_parts` returns a `Parts`: the plain model (what is saved) beside what the steps call (the
model DDP-wrapped and/or compiled), AdamW without weight decay on biases and norm layers, a
linear warm-up then cosine decay of the learning rate per step, cross-entropy with label
smoothing, the autocast context and GradScaler of the AMP setting (`cvpipe.runtime`), and the
train (augmenting, random crops from the cache) and eval (centre crop of the cache) transforms of
uint8 batches on the device (`cvpipe.augment`), and, where configured, the EMA of the weights
(`cvpipe.ema`) and Mixup/CutMix (`cvpipe.mixing`).
`batch_size` is the global batch: each process loads its share.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cvpipe import augment, runtime
from cvpipe.data import CacheSplit, build_loader
from cvpipe.distributed import DistEnv
from cvpipe.ema import EmaModel
from cvpipe.mixing import Mixing
from cvpipe.models import build_model

if TYPE_CHECKING:
    from cvpipe.settings import TrainConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Parts:
    """What one training run works with, built once by `build_parts`."""

    model: nn.Module  # the plain model: saved, loaded, evaluated for the model file
    wrapped: nn.Module  # what the steps call: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    val_loader: DataLoader
    criterion: nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager]
    train_transform: Callable[[torch.Tensor], torch.Tensor]  # uint8 -> augmented, normalised
    eval_transform: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> normalised
    aug_generator: torch.Generator
    num_classes: int
    mean: list[float]
    std: list[float]
    amp: str  # the autocast dtype's name, or "off"
    ema: EmaModel | None = None  # the EMA of the plain model's weights (`ema_decay`), or None
    # Mixup/CutMix of a normalised batch and its labels -> mixed batch, soft targets; or None.
    mix: Mixing | None = None


def build_loaders(
    cfg: TrainConfig, cache_dir: str | Path, env: DistEnv
) -> tuple[DataLoader, DataLoader]:
    """Train and val loaders of uint8 batches; each process gets its share of the global batch."""
    per_rank = cfg.batch_size // env.world_size
    common: dict[str, Any] = {
        "rank": env.rank,
        "world_size": env.world_size,
        "num_workers": cfg.num_workers,
        "pin_memory": env.device.type == "cuda",
    }
    train_loader = build_loader(
        CacheSplit(cache_dir, "train"), per_rank, train=True, seed=cfg.seed, **common
    )
    val_loader = build_loader(CacheSplit(cache_dir, "val"), per_rank, train=False, **common)
    return train_loader, val_loader


def _model(cfg: TrainConfig, num_classes: int, env: DistEnv) -> tuple[nn.Module, nn.Module]:
    """The plain model on the device, and what the steps call: it DDP-wrapped and/or compiled."""
    device = env.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, num_classes, cfg.weights)
    if cfg.sync_bn and env.distributed:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # PyTorch's SyncBatchNorm supports GPU inputs only
            log.warning("sync_bn is ignored on %s: SyncBatchNorm needs CUDA", device)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped: nn.Module = model
    if env.distributed:
        wrapped = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if cfg.compile:
        wrapped = cast(nn.Module, torch.compile(wrapped))
    return model, wrapped


def _optimization(
    cfg: TrainConfig, model: nn.Module, steps: int, device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its per-step warm-up + cosine schedule, for `steps` steps per epoch."""
    # The fused CUDA kernel updates all parameters in a few launches instead of several per
    # tensor; on the CPU the default implementation stays (what the CPU tests pin down).
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=fused)
    warmup = max(1, round(cfg.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps, warmup)
    )
    return optimizer, scheduler


def build_parts(cfg: TrainConfig, stats: dict, cache_dir: str | Path, env: DistEnv) -> Parts:
    """Model, optimisation, precision and transforms for a run, on this process's device."""
    device = env.device
    train_loader, val_loader = build_loaders(cfg, cache_dir, env)
    model, wrapped = _model(cfg, len(stats["classes"]), env)
    optimizer, scheduler = _optimization(cfg, model, len(train_loader), device)
    dtype = runtime.amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if dtype is not None and device.type == "cpu":
        log.warning(
            "amp %s on a CPU runs slower than float32 (few CPUs have fast half-precision "
            "kernels): set amp to auto or off for a CPU experiment.",
            cfg.amp,
        )
    mean, std = _normalization(cfg, stats)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    policy = cfg.policy()
    generator = torch.Generator(device=device)
    return Parts(
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        train_loader=train_loader,
        val_loader=val_loader,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        autocast=runtime.autocast_factory(device, dtype),
        train_transform=lambda x: augment.train_transform(
            x, policy, mean_t, std_t, generator, cfg.channels_last, cfg.image_size
        ),
        eval_transform=lambda x: augment.eval_transform(
            x, mean_t, std_t, cfg.channels_last, cfg.image_size
        ),
        aug_generator=generator,
        num_classes=len(stats["classes"]),
        mean=mean,
        std=std,
        amp=str(dtype).removeprefix("torch.") if dtype else "off",
        ema=None if cfg.ema_decay is None else EmaModel(model, cfg.ema_decay),
        mix=_mixing(cfg, len(stats["classes"]), generator),
    )


def _mixing(cfg: TrainConfig, num_classes: int, generator: torch.Generator) -> Mixing | None:
    """Mixup/CutMix drawing from the augmentation generator; None when both alphas are 0."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    return Mixing(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes, generator)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier per step: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices and kernels, none on biases and norm parameters."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _normalization(cfg: TrainConfig, stats: dict) -> tuple[list[float], list[float]]:
    """Mean and std the images are normalised with: the data set's, or ImageNet's for
    pretrained weights (under `normalize: auto`)."""
    mode = cfg.normalize
    if mode == "auto":
        mode = "dataset" if cfg.weights == "none" else "imagenet"
    if mode == "imagenet":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return stats["mean"], stats["std"]
