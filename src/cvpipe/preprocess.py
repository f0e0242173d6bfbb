"""Preprocess stage: decode and resize every image once into a packed uint8 cache per split.

For each split the cache is `<split>_images.npy` (N x S x S x 3, uint8, RGB, channels last, so it
can be memory-mapped) and `<split>_labels.npy` (N, int64), rows in manifest order. `stats.json`
holds the class names, the per-channel mean and std of the train split (on the 0..1 scale) and
the manifest hash the cache was built from. Training reads only these files.

Resize rules (`preprocess.resize`):

- `crop`: scale the shorter side to S, then cut the centre S x S square (torchvision's
  `Resize(S)` + `CenterCrop(S)`);
- `letterbox`: scale the longer side to S and pad the rest with black, keeping the whole image.

Downscaling uses `INTER_AREA` (no aliasing), upscaling `INTER_LINEAR`. A JPEG at least 2, 4 or
8 times larger than it needs to be is first reduced by that factor while decoding
(`cvpipe.decode`), then shrunk the rest of the way (less than 2x) with `INTER_LINEAR`: the result
differs from a full-resolution decode + `INTER_AREA` by about one grey level on average
(tests/test_preprocess.py states the bounds).

Each file is read once (bytes -> sha256 check -> decode); the threads that decode also count
each channel's values (integer histograms), which give the exact mean and std. Rows are written
in order as they are ready, with a bounded number in flight, so memory does not grow with the
number of images.
"""

from __future__ import annotations

import hashlib
import logging
import math
import typing
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from numpy.lib import format as npy_format

from cvpipe import atomic
from cvpipe.decode import (
    REDUCTIONS,
    BadImage,
    decode_reduced_bgr,
    decode_rgb8,
    jpeg_size,
    sniff_format,
)
from cvpipe.errors import CvpipeError
from cvpipe.index import SPLITS, in_order, iter_manifest, manifest_sha256
from cvpipe.progress import Progress
from cvpipe.settings import Resize

log = logging.getLogger(__name__)
# Images decoded ahead of the writer, per thread: enough to keep every thread busy.
IN_FLIGHT = 4

RESIZE_MODES: tuple[str, ...] = typing.get_args(Resize)


def resize_square(
    image: np.ndarray, size: int, mode: str, downscale: int = cv2.INTER_AREA
) -> np.ndarray:
    """Resize an HxWx3 image to size x size by the rule `mode` (see the module docstring),
    shrinking with the OpenCV interpolation `downscale`."""
    h, w = image.shape[:2]
    fit = min if mode == "crop" else max
    scale = size / fit(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = downscale if scale < 1 else cv2.INTER_LINEAR
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


def reduction(width: int, height: int, size: int, mode: str) -> int:
    """The largest reduced-decoding factor (8, 4, 2, else 1) that still leaves the side the
    resize rule scales to `size` (shorter for crop, longer for letterbox) at least `size`."""
    side = min(width, height) if mode == "crop" else max(width, height)
    return next((k for k in REDUCTIONS if side >= k * size), 1)


def decode_resized(data: bytes, size: int, mode: str, stored: tuple[int, int] | None) -> np.ndarray:
    """Decode file bytes (a JPEG reduced while decoding where it is at least twice the size it
    is scaled to; `stored` = its (width, height), else read from its header) and resize."""
    stored = stored or jpeg_size(data)
    factor = reduction(*stored, size, mode) if stored else 1
    if factor == 1 or sniff_format(data) != "jpeg":
        return resize_square(decode_rgb8(data), size, mode)
    # Less than 2x is left to shrink after a reduced decode: bilinear is as close to the full
    # decode + INTER_AREA as INTER_AREA itself is (measured), at a third of its time. Colour
    # order is swapped last, on the smaller image (it commutes with resizing and padding).
    small = resize_square(decode_reduced_bgr(data, factor), size, mode, cv2.INTER_LINEAR)
    return cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2RGB)


def load_resized(
    path: Path, sha256: str, size: int, mode: str, stored: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode one original and resize it, as the cache holds it; the file is read once and must
    still match the manifest's hash. `stored`: its (width, height) from the manifest."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CvpipeError(f"{path} changed since it was indexed; rerun the workflow to re-index.")
    try:
        return decode_resized(data, size, mode, stored)
    except BadImage as exc:  # indexed as good, so this means the file changed underneath us
        raise CvpipeError(f"{path}: {exc}") from None


def channel_histograms(image: np.ndarray) -> np.ndarray:
    """3 x 256 counts of each channel's values in an H x W x 3 uint8 image (int64)."""
    # calcHist releases the GIL and needs no float copy; its float32 counts are exact up to
    # 2**24 pixels per image, far above any cache size.
    counts = [cv2.calcHist([image], [c], None, [256], [0, 256])[:, 0] for c in range(3)]
    return np.stack(counts).astype(np.int64)


def stats_from_histograms(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale from 3 x 256 value counts, in exact integer
    sums (Python ints) until the one division per channel."""
    means, stds = [], []
    for counts in hist.tolist():
        n = sum(counts)
        total = sum(c * v for v, c in enumerate(counts))
        total_sq = sum(c * v * v for v, c in enumerate(counts))
        means.append(total / n / 255)
        stds.append(math.sqrt(max(n * total_sq - total * total, 0)) / n / 255)
    return means, stds


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


def write_split(
    pool: Executor,
    window: int,
    members: Iterable[dict],
    count: int,
    root: Path,
    target: Path,
    size: int,
    mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Write one split's `count` images to `target` (.npy, rows in manifest order, appended one
    by one after the header, so neither rows nor images pile up in memory); return their labels
    and 3 x 256 channel histograms."""

    def prepare(row: dict) -> tuple[np.ndarray, np.ndarray, int]:
        stored = (row["width"], row["height"])
        image = load_resized(root / row["path"], row["sha256"], size, mode, stored)
        return image, channel_histograms(image), row["label"]

    hist = np.zeros((3, 256), np.int64)
    labels = np.zeros(count, np.int64)
    header = {
        "descr": npy_format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (count, size, size, 3),
    }
    split = target.name.removesuffix("_images.npy")
    with atomic.atomic_path(target, suffix=".npy") as tmp, open(tmp, "wb") as f:
        npy_format.write_array_header_1_0(f, header)
        with Progress(f"preprocess {split}", count, log) as progress:
            for i, (image, counts, label) in enumerate(in_order(pool, prepare, members, window)):
                f.write(np.ascontiguousarray(image).data)
                hist += counts
                labels[i] = label
                progress.update()
    return labels, hist


def manifest_summary(manifest_path: str | Path) -> tuple[dict[str, int], list[str]]:
    """Images per split and the class names in label order, in one pass over the manifest."""
    counts = dict.fromkeys(SPLITS, 0)
    names: dict[int, str] = {}
    for row in iter_manifest(manifest_path):
        counts[row["split"]] += 1
        names[row["label"]] = row["class"]
    return counts, [names[i] for i in range(len(names))]


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
    # The manifest is streamed, not held: its rows would grow memory with the data set.
    counts, classes = manifest_summary(manifest_path)
    _check_space(out, sum(counts.values()), size)
    cv2.setNumThreads(1)  # parallelism comes from the thread pool below, one image per thread
    hists = {}
    # Threads, not processes: decoding, resizing, hashing and reading release the GIL, and the
    # images need no copying between processes (see BENCHMARKS.md, "Preprocess").
    threads = max(1, threads)
    with ThreadPoolExecutor(threads) as pool:
        for split in SPLITS:
            members = (r for r in iter_manifest(manifest_path) if r["split"] == split)
            target = out / f"{split}_images.npy"
            labels, hists[split] = write_split(
                pool, IN_FLIGHT * threads, members, counts[split], root, target, size, mode
            )
            with atomic.atomic_path(out / f"{split}_labels.npy", suffix=".npy") as tmp:
                np.save(tmp, labels)
            log.info("%s: %d images -> %s", split, counts[split], target)
    mean, std = stats_from_histograms(hists["train"])
    stats = {
        "classes": classes,
        "image_size": size,
        "resize": mode,
        "mean": mean,
        "std": std,
        "counts": counts,
        "manifest_sha256": manifest_sha256(manifest_path),
    }
    atomic.write_json(out / "stats.json", stats)
    return stats
