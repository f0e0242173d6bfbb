"""Run one epoch of cvpipe's real training step under torchrun (or alone) and save the result.

Used by test_ddp.py: with a model that has no BatchNorm or dropout and no augmentation, the only
thing DDP changes is *where* the global batch is computed, so 1 and 2 processes must end with
the same weights and report the same metrics on every rank.

    [torchrun --nproc_per_node=2] python ddp_step.py CACHE_DIR OUT_DIR [cpu|cuda]

On `cuda` (NCCL), TF32 is switched off so that both runs compute in true fp32.
"""

import contextlib
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvpipe import distributed
from cvpipe.augment import eval_transform
from cvpipe.data import read_stats
from cvpipe.epoch import evaluate_split, train_one_epoch
from cvpipe.parts import Parts, build_loaders
from cvpipe.train import TrainConfig


def main(cache_dir: str, out_dir: str, device: str = "cpu") -> None:
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    env = distributed.init(device)
    cfg = TrainConfig(image_size=32, batch_size=8, seed=0)
    train_loader, val_loader = build_loaders(cfg, cache_dir, env)
    train_loader.sampler.set_epoch(0)
    stats = read_stats(cache_dir)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(stats["classes"])),
    ).to(env.device)  # fmt: skip
    ids = [env.device] if env.device.type == "cuda" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mean = torch.tensor(stats["mean"], device=env.device)
    std = torch.tensor(stats["std"], device=env.device)

    def plain(x):
        return eval_transform(x, mean, std)

    parts = Parts(  # plain SGD, fp32, no augmentation
        model=model,
        wrapped=DistributedDataParallel(model, device_ids=ids) if env.distributed else model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=torch.amp.GradScaler(env.device.type, enabled=False),
        train_loader=train_loader,
        val_loader=val_loader,
        criterion=nn.CrossEntropyLoss(),
        autocast=contextlib.nullcontext,
        train_transform=plain,
        eval_transform=plain,
        aug_generator=torch.Generator(),
        num_classes=len(stats["classes"]),
        mean=stats["mean"],
        std=stats["std"],
        amp="off",
    )
    fit = train_one_epoch(parts, train_loader, env)
    val = evaluate_split(parts, val_loader, env)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics-rank{env.rank}.json").write_text(json.dumps({"train": fit, "val": val}))
    if env.is_main:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
