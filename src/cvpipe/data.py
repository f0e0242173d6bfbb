"""Train-time data loading from the preprocessed uint8 cache (never from the original files).

`CacheSplit` is a map-style dataset over one split's memory-mapped images that fetches whole
batches through `__getitems__` (the batched-fetch hook of PyTorch's DataLoader): one gather of
contiguous uint8 rows per batch instead of one Python call per image. Batches stay uint8 and
channels-last; conversion, augmentation and normalisation happen on the training device, in
`cvpipe.augment`.

Sampling always goes through `DistributedSampler` (with one replica when not distributed), so a
single process and a DDP job share one code path, and the shuffle order depends only on the seed
and the epoch: a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from cvpipe.errors import CvpipeError


def read_stats(cache_dir: str | Path) -> dict:
    """The cache's stats.json (classes, image size, mean/std, counts)."""
    path = Path(cache_dir) / "stats.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CvpipeError(f"{path} is missing: run the preprocess stage first.") from None


class CacheSplit(Dataset):
    """One split of the cache: `(uint8 N x S x S x 3 images, int64 labels)` batches."""

    def __init__(self, cache_dir: str | Path, split: str) -> None:
        self.images_path = Path(cache_dir) / f"{split}_images.npy"
        labels_path = Path(cache_dir) / f"{split}_labels.npy"
        try:
            self.labels = np.load(labels_path)
            # Open once here to check the file; workers reopen it lazily (see `images`).
            images = np.load(self.images_path, mmap_mode="r")
        except (FileNotFoundError, ValueError) as exc:
            raise CvpipeError(
                f"cannot read the {split} cache in {cache_dir} ({exc}); rerun the preprocess stage."
            ) from None
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise CvpipeError(f"{self.images_path} is not an N x S x S x 3 uint8 array.")
        if len(images) != len(self.labels):
            raise CvpipeError(
                f"{self.images_path} holds {len(images)} images but {labels_path} "
                f"{len(self.labels)} labels; rerun the preprocess stage."
            )
        self.image_size = images.shape[1]
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        # Opened per process: a memmap is cheap to open, and not opening it in __init__ keeps
        # the dataset small to pickle for DataLoader workers.
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        # Gather in file order (sequential reads), the batch order does not matter for SGD.
        idx.sort()
        return torch.from_numpy(self.images[idx]), torch.from_numpy(self.labels[idx])


def _keep_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn: `__getitems__` already returns a collated batch."""
    return batch


class ShardSampler(Sampler[int]):
    """Rank `rank`'s strided share of `range(n)`, in order, with no padding.

    For evaluation: unlike `DistributedSampler`, no sample is repeated to even out the shards,
    so metrics summed over ranks count every sample exactly once.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(
    dataset: CacheSplit,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of uint8 batches; `batch_size` is per process.

    Training batches are shuffled by `DistributedSampler` (call `loader.sampler.set_epoch`) and the
    last incomplete batch is dropped; evaluation batches cover every sample once across ranks.
    """
    if train:
        shuffled: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        if len(shuffled) < batch_size:
            raise CvpipeError(
                f"the training split has {len(dataset)} images, fewer than one batch of "
                f"{batch_size * world_size}; lower batch_size or add data."
            )
        sampler: Sampler[int] = shuffled
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=train, collate_fn=_keep_batch,
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory,
    )  # fmt: skip
