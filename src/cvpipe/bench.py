"""`cvpipe bench loader`: train-time loader throughput, cvpipe's cache vs torchvision ImageFolder.

Both loaders deliver the same thing: shuffled training batches of `image_size` x `image_size`
float tensors, flipped, turned by a random multiple of 90 degrees, brightness/contrast-jittered
and normalised (the default policy of config/config.yaml), from the same training images, with
the same batch size. The baseline is what a user would otherwise write:
`ImageFolder` + PIL decode + torchvision transforms (Resize, CenterCrop, RandomHorizontalFlip,
RandomVerticalFlip, a random quarter turn, ColorJitter, ToTensor, Normalize) in DataLoader
workers.
cvpipe's loader slices the preprocessed uint8 cache and augments whole batches with tensor ops
(`cvpipe.augment`), here on the CPU. The one-off cost of building the cache is reported too.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from cvpipe.augment import AugmentPolicy, train_transform
from cvpipe.data import CacheSplit, build_loader, read_stats
from cvpipe.index import read_manifest, split_rows, write_index
from cvpipe.preprocess import preprocess
from cvpipe.synth import make_dataset

# The augmentation both loaders apply: the defaults of config/config.yaml.
POLICY = AugmentPolicy(hflip=True, vflip=True, rot90=True, brightness=0.1, contrast=0.1)


def imagefolder_loader(
    root: Path, keep: set[str], size: int, mean, std, batch_size: int, workers: int
) -> DataLoader:
    """The baseline: ImageFolder over the same training files, PIL decode, torchvision aug."""
    tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            # Quarter turns: exact on square images, like cvpipe's rot90.
            transforms.RandomChoice([transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            transforms.ColorJitter(brightness=POLICY.brightness, contrast=POLICY.contrast),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(
        str(root), transform=tf, is_valid_file=lambda p: os.path.relpath(p, root) in keep
    )
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )  # fmt: skip


def measure(batches, epochs: int, make_input) -> float:
    """Images/s over `epochs` passes, not counting the first batch (worker start-up)."""
    count, started = 0, None
    for _ in range(epochs):
        for images, _labels in batches():
            x = make_input(images)
            if started is None:
                started = time.perf_counter()
                continue
            count += x.shape[0]
    return count / (time.perf_counter() - started)


def bench_loader(args: argparse.Namespace) -> list[dict]:
    """Run the comparison and print a table; returns its rows."""
    logging.getLogger("cvpipe").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as tmp:
        work = Path(tmp)
        root = Path(args.data_root) if args.data_root else work / "data"
        if not args.data_root:
            make_dataset(
                root, args.images_per_class, args.source_size, seed=0, threads=os.cpu_count() or 1
            )
        manifest = work / "manifest.csv"
        write_index(
            root,
            manifest,
            work / "bad.csv",
            {"train": 0.7, "val": 0.15, "test": 0.15},
            0,
            "skip",
            os.cpu_count() or 1,
        )
        started = time.perf_counter()
        preprocess(manifest, root, work / "cache", args.image_size, "crop", os.cpu_count() or 1)
        preprocess_s = time.perf_counter() - started

        stats = read_stats(work / "cache")
        mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
        train_rows = split_rows(read_manifest(manifest), "train")
        gen = torch.Generator().manual_seed(0)

        def cvpipe_input(images):
            return train_transform(images, POLICY, mean, std, gen)

        rows = []
        for workers in sorted({0, args.workers}):
            loader = build_loader(
                CacheSplit(work / "cache", "train"),
                args.batch_size,
                train=True,
                num_workers=workers,
            )
            rate = measure(lambda loader=loader: loader, args.epochs, cvpipe_input)
            rows.append(
                {
                    "loader": "cvpipe cache + batched tensor aug",
                    "workers": workers,
                    "images_per_s": rate,
                }
            )
        baseline = imagefolder_loader(
            root, {r["path"] for r in train_rows}, args.image_size, stats["mean"], stats["std"],
            args.batch_size, args.workers,
        )  # fmt: skip
        base_rate = measure(lambda: baseline, args.epochs, lambda images: images)
        rows.append(
            {
                "loader": "ImageFolder + PIL + torchvision transforms",
                "workers": args.workers,
                "images_per_s": base_rate,
            }
        )

    cpu = platform.processor() or platform.machine()
    print(
        f"\nLoader benchmark: {len(train_rows)} training images ({args.source_size} px originals"
        f" -> {args.image_size} px), batch {args.batch_size}, {args.epochs} passes, "
        f"{os.cpu_count()} CPUs ({cpu}), torch threads {torch.get_num_threads()}"
    )
    print(f"One-off preprocessing into the cache: {preprocess_s:.1f} s\n")
    print(f"| {'loader':<44} | workers | images/s | vs ImageFolder |")
    print(f"|{'-' * 46}|---------|----------|----------------|")
    for r in rows:
        rate, ratio = r["images_per_s"], r["images_per_s"] / base_rate
        print(f"| {r['loader']:<44} | {r['workers']:>7} | {rate:>8.0f} | {ratio:>13.1f}x |")
    return rows
