"""Preprocess stage: decode and resize every image once into a packed uint8 cache per split.

For each split the cache is `<split>_images.npy` (N x S x S x 3, uint8, RGB, channels last, so it
can be memory-mapped) and `<split>_labels.npy` (N, int64), rows in manifest order. `stats.json`
holds the class names, the per-channel mean and std of the train split (on the 0..1 scale) and
the manifest hash the cache was built from. Training reads only these files.

Resize rules (`preprocess.resize`):

- `crop`: scale the shorter side to S, then cut the centre S x S square (torchvision's
  `Resize(S)` + `CenterCrop(S)`);
- `letterbox`: scale the longer side to S and pad the rest with black, keeping the whole image.

Downscaling uses `INTER_AREA` (no aliasing), upscaling `INTER_LINEAR`.
"""

from __future__ import annotations

import hashlib
import logging
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.format import open_memmap

from cvpipe import atomic
from cvpipe.decode import BadImage, decode_rgb8
from cvpipe.errors import CvpipeError
from cvpipe.index import SPLITS, class_names, manifest_sha256, read_manifest, split_rows
from cvpipe.settings import Resize

log = logging.getLogger(__name__)

RESIZE_MODES: tuple[str, ...] = typing.get_args(Resize)


def resize_square(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize an HxWx3 image to size x size by the rule `mode` (see the module docstring)."""
    h, w = image.shape[:2]
    fit = min if mode == "crop" else max
    scale = size / fit(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else image
    if mode == "crop":
        top, left = (nh - size) // 2, (nw - size) // 2
        return resized[top : top + size, left : left + size]
    if mode != "letterbox":
        raise CvpipeError(f"preprocess.resize must be one of {RESIZE_MODES}, not {mode!r}")
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def load_resized(path: Path, sha256: str, size: int, mode: str) -> np.ndarray:
    """Decode one original and resize it; the file must still match the manifest's hash."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CvpipeError(f"{path} changed since it was indexed; rerun the workflow to re-index.")
    try:
        return resize_square(decode_rgb8(data), size, mode)
    except BadImage as exc:  # indexed as good, so this means the file changed underneath us
        raise CvpipeError(f"{path}: {exc}") from None


def channel_stats(images: np.ndarray, chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 N x H x W x 3 array, on the 0..1 scale."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def _check_space(out: Path, n_images: int, size: int) -> None:
    """Refuse before writing a cache that cannot fit: a full disk under a memory map is a SIGBUS
    that kills the job without a word, not an error. Old cache files stay until replaced, so
    the whole new cache must fit beside them."""
    short = atomic.no_space(out, n_images * (size * size * 3 + 8) + 2**20)
    if short:
        raise CvpipeError(
            f"{short} (the {size}px cache of {n_images} images; lower train.image_size for a "
            "smaller one)"
        )


def preprocess(
    manifest_path: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    size: int,
    mode: Resize = "crop",
    threads: int = 1,
) -> dict:
    """Build the cache for every split in `out_dir` and return the stats written to stats.json."""
    if mode not in RESIZE_MODES:
        raise CvpipeError(f"preprocess.resize must be one of {RESIZE_MODES}, not {mode!r}")
    root, out = Path(data_root), Path(out_dir)
    rows = read_manifest(manifest_path)
    _check_space(out, sum(len(split_rows(rows, s)) for s in SPLITS), size)
    cv2.setNumThreads(1)  # parallelism comes from the thread pool below, one image per thread
    counts = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for split in SPLITS:
            members = split_rows(rows, split)
            counts[split] = len(members)
            with atomic.atomic_path(out / f"{split}_images.npy", suffix=".npy") as tmp:
                images = open_memmap(
                    tmp, mode="w+", dtype=np.uint8, shape=(len(members), size, size, 3)
                )

                def fill(i: int, images: np.ndarray = images, members: list = members) -> None:
                    row = members[i]
                    images[i] = load_resized(root / row["path"], row["sha256"], size, mode)

                list(pool.map(fill, range(len(members))))
                images.flush()
                if split == "train":
                    mean, std = channel_stats(images)
                del images
            labels = np.array([r["label"] for r in members], dtype=np.int64)
            with atomic.atomic_path(out / f"{split}_labels.npy", suffix=".npy") as tmp:
                np.save(tmp, labels)
            log.info("%s: %d images -> %s", split, len(members), out / f"{split}_images.npy")
    stats = {
        "classes": class_names(rows),
        "image_size": size,
        "resize": mode,
        "mean": mean,
        "std": std,
        "counts": counts,
        "manifest_sha256": manifest_sha256(manifest_path),
    }
    atomic.write_json(out / "stats.json", stats)
    return stats
