"""A small real data set for tests and benchmarks: scikit-learn's handwritten digits as PNG files.

`load_digits` ships with scikit-learn (no download): 1,797 scans of handwritten digits, 0 to 9,
about 180 per class, 8 x 8 pixels with values 0..16 (the UCI "Optical Recognition of Handwritten
Digits" set). `write_digits` writes them as an ImageFolder tree `OUT/<digit>/<index>.png`, the
layout `data.root` expects: uint8 RGB (three equal channels), value * 255 / 16 rounded, and with
`scale` > 1 each pixel becomes a `scale` x `scale` block (nearest neighbour).

The native 8 x 8 is the default: preprocessing resizes every image to the cache size with
`INTER_LINEAR` anyway, and a nearest-neighbour upscale first would only add block edges.

Every file is written atomically, and a file that already holds the right bytes is left alone, so
a second run with the same arguments rewrites nothing (mtimes and the index's content fingerprint
stay as they were).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from cvpipe import atomic
from cvpipe.errors import CvpipeError

log = logging.getLogger(__name__)

MAX_VALUE = 16  # load_digits' pixels are counts of set bits in 4 x 4 blocks: 0..16
INSTALL_HINT = "pip install 'cvpipe[data]' (or: pip install scikit-learn)"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: `(N x 8 x 8 float images in 0..16, N int labels)`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise CvpipeError(
            f"cvpipe digits needs scikit-learn, which is not installed; install it: {INSTALL_HINT}"
        ) from None
    digits = load_digits()
    return np.asarray(digits.images), np.asarray(digits.target)


def to_rgb8(image: np.ndarray, scale: int = 1) -> np.ndarray:
    """One 8 x 8 digit (0..16) as an uint8 RGB image, `scale` times larger (nearest neighbour)."""
    gray = np.rint(image * (255 / MAX_VALUE)).astype(np.uint8)
    gray = np.repeat(np.repeat(gray, scale, axis=0), scale, axis=1)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _png(image: np.ndarray) -> bytes:
    # A fixed compression level: the same pixels give the same bytes on every run.
    ok, data = cv2.imencode(".png", image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return data.tobytes()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically unless it already holds exactly these bytes."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic.write_bytes(path, data)
    return True


def write_digits(out_dir: str | Path, scale: int = 1) -> Path:
    """Write the digits as `out_dir/<digit>/<index>.png` (index: 4 digits, the position in
    scikit-learn's order); returns `out_dir`."""
    if scale < 1:
        raise CvpipeError(f"cvpipe digits: --scale must be an integer >= 1, not {scale}")
    images, labels = load_digits_arrays()
    out = Path(out_dir)
    written = 0
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = out / str(int(label)) / f"{index:04d}.png"
        written += _write_if_changed(path, _png(to_rgb8(image, scale)))
    side = images.shape[1] * scale
    log.info(
        "digits: %d images (%d classes, %d x %d px) in %s; %d file(s) written, %d unchanged",
        len(images), len(np.unique(labels)), side, side, out, written, len(images) - written,
    )  # fmt: skip
    return out
