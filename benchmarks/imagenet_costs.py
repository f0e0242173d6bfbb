"""Per-image costs behind docs/imagenet-scale.md, measured on this machine (one core each).

    python benchmarks/imagenet_costs.py [--images 200] [--cache-images 4000]

ImageNet-like JPEGs: random 500 x 375 crops (flipped, scaled 0.8-1.0) of scikit-learn's two
bundled photos (china.jpg, flower.jpg), quality 90, about ImageNet's mean size and file size.
Measured per image, single-threaded: sha256 of the file (the index), cv2 full decode, cv2
reduced decode (IMREAD_REDUCED_COLOR_2), resize shorter side to 256 + centre crop (INTER_AREA),
and PIL + torchvision Resize(256) + CenterCrop(256) as the baseline. Then the training-time read:
batches of 256 random rows gathered from a memory-mapped uint8 cache (N x S x S x 3, S = 224 and
256), from the page cache (warm) and after evicting the file (posix_fadvise DONTNEED: cold).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms import v2

from cvpipe.preprocess import resize_square

QUALITY, NOISE = 92, 8.0


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    photos = [np.asarray(p) for p in load_sample_images().images]  # RGB, 427 x 640
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        scale = rng.uniform(1.0, 1.25)  # upscale a little so a 500 x 375 crop fits with room
        big = cv2.resize(photo, None, fx=scale * 500 / 427 * 0.9, fy=scale * 500 / 427 * 0.9)
        y, x = rng.integers(0, big.shape[0] - 375 + 1), rng.integers(0, big.shape[1] - 500 + 1)
        crop = big[y : y + 375, x : x + 500]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        # Sensor-like noise: the bundled photos are smoother than ImageNet's (~110 KB each).
        noisy = crop + rng.normal(0, NOISE, crop.shape)
        crop = np.clip(noisy, 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(path), crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        paths.append(path)
    return paths


def per_image_ms(fn, paths: list[Path], repeats: int = 3) -> float:
    """CPU time of this process per image, best of `repeats` (steady on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for path in paths:
            fn(path)
        best = min(best, (time.process_time() - started) / len(paths) * 1000)
    return best


def decode_costs(paths: list[Path]) -> dict[str, float]:
    pil_tf = v2.Compose([v2.Resize(256), v2.CenterCrop(256)])

    def full(path: Path) -> np.ndarray:
        return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)

    def reduced(path: Path) -> np.ndarray:
        return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)

    decoded = [full(p) for p in paths]
    costs = {
        "read + sha256": per_image_ms(lambda p: hashlib.sha256(p.read_bytes()).digest(), paths),
        "cv2 decode, full": per_image_ms(full, paths),
        "cv2 decode, reduced 2x": per_image_ms(reduced, paths),
        "resize to 256 + centre crop (given decoded)": 0.0,
        "cv2 full decode + resize 256 + crop": per_image_ms(
            lambda p: resize_square(full(p), 256, "crop"), paths
        ),
        "cv2 full decode + resize 224 + crop": per_image_ms(
            lambda p: resize_square(full(p), 224, "crop"), paths
        ),
        "PIL decode + Resize(256) + CenterCrop(256)": per_image_ms(
            lambda p: pil_tf(Image.open(p).convert("RGB")), paths
        ),
    }
    started = time.process_time()
    for image in decoded:
        resize_square(image, 256, "crop")
    costs["resize to 256 + centre crop (given decoded)"] = (
        (time.process_time() - started) / len(decoded) * 1000
    )
    return costs


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gather_rate(path: Path, batches: int, batch: int = 256, seed: int = 0) -> float:
    """MB/s of random sorted-index batch gathers from the memory-mapped cache at `path`."""
    images = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    moved, started = 0, time.perf_counter()
    for _ in range(batches):
        idx = np.sort(rng.choice(len(images), batch, replace=False))
        moved += images[idx].nbytes
    return moved / (time.perf_counter() - started) / 1e6


def loader_rates(folder: Path, n: int, side: int) -> dict[str, float]:
    path = folder / f"cache_{side}.npy"
    images = np.lib.format.open_memmap(path, "w+", np.uint8, (n, side, side, 3))
    rng = np.random.default_rng(0)
    for start in range(0, n, 500):
        stop = min(n, start + 500)
        images[start:stop] = rng.integers(0, 256, (stop - start, side, side, 3), np.uint8)
    images.flush()
    del images
    batches = max(4, n // 256)
    gather_rate(path, 2)  # warm: the whole file is in the page cache after writing it
    warm = max(gather_rate(path, batches, seed=s) for s in range(3))
    evict(path)
    cold = gather_rate(path, batches, seed=3)
    path.unlink()
    return {"warm (page cache)": warm, "cold (disk)": cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="JPEGs to time")
    parser.add_argument("--cache-images", type=int, default=4000, help="rows of the test cache")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="imagenet-costs-", dir=".") as tmp:
        folder = Path(tmp)
        paths = make_jpegs(folder, args.images)
        kb = np.mean([p.stat().st_size for p in paths]) / 1000
        print(f"{len(paths)} JPEGs 500 x 375, mean {kb:.0f} KB; ms per image, one core:")
        for name, ms in decode_costs(paths).items():
            print(f"  {name:<46} {ms:7.2f} ms")
        for side in (224, 256):
            rates = loader_rates(folder, args.cache_images, side)
            mib = args.cache_images * side * side * 3 / 2**20
            print(f"memmap gather, batch 256, {side} px cache ({mib:,.0f} MiB):")
            for name, rate in rates.items():
                per_s = rate * 1e6 / (side * side * 3)
                print(f"  {name:<18} {rate:8,.0f} MB/s = {per_s:8,.0f} images/s")


if __name__ == "__main__":
    main()
