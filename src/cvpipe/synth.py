"""The built-in data set: synthetic industrial surfaces with and without defects, drawn with OpenCV.

Each image is a textured surface (brushed metal, cast metal or a woven, fabric-like finish) under
uneven lighting, with sensor noise, focus blur and dust specks, in one of four classes:

- `ok`: no defect;
- `scratch`: a thin, slightly curved line, brighter or darker than the surface;
- `dent`: a shallow elliptical depression, visible as a light/dark crescent from the light's side;
- `stain`: an irregular, soft-edged, tinted blot.

Position, size, contrast, texture, tint and lighting vary per image, so a classifier has to learn
the defect shapes, not a shortcut. Image `i` of class `c` depends only on `(seed, c, i)`: the set
is deterministic, and asking for more images per class keeps the existing ones unchanged.
"""

from __future__ import annotations

import logging
import shutil
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from cvpipe.errors import CvpipeError
from cvpipe.settings import ImageFormat

log = logging.getLogger(__name__)

CLASSES = ("ok", "scratch", "dent", "stain")
FORMATS: tuple[str, ...] = typing.get_args(ImageFormat)


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled smoothly to `size` x `size`, about N(0, 1)."""
    n = max(2, size // cell + 2)
    grid = rng.standard_normal((n, n)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _rotate(image: np.ndarray, angle: float) -> np.ndarray:
    size = image.shape[0]
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    return cv2.warpAffine(image, m, (size, size), borderMode=cv2.BORDER_REFLECT)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gray surface texture in [0, 1] (about), HxW float32."""
    kind = rng.integers(3)
    if kind == 0:  # brushed metal: fine noise smeared along one direction
        noise = rng.standard_normal((size, size)).astype(np.float32)
        streaks = cv2.blur(noise, (int(rng.integers(size // 6, size // 2)), 1))
        streaks = streaks / (streaks.std() + 1e-6)
        surface = rng.uniform(0.45, 0.7) + rng.uniform(0.025, 0.05) * streaks
        surface = _rotate(surface, rng.uniform(0, 180))
    elif kind == 1:  # cast: blotches at several scales plus grain
        surface = cast(
            np.ndarray,
            sum(
                amp * _smooth_noise(rng, size, cell)
                for amp, cell in ((0.04, size // 3), (0.03, size // 8), (0.02, size // 24 or 1))
            ),
        )
        surface = rng.uniform(0.35, 0.6) + surface
        surface += rng.uniform(0.01, 0.03) * rng.standard_normal((size, size)).astype(np.float32)
    else:  # woven: a fine two-way periodic pattern
        period = rng.uniform(size / 32, size / 14)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        weave = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        surface = rng.uniform(0.4, 0.65) + rng.uniform(0.025, 0.06) * weave
        surface = _rotate(surface.astype(np.float32), rng.uniform(0, 90))
        surface += 0.015 * rng.standard_normal((size, size)).astype(np.float32)
    return surface.astype(np.float32)


def _centre(rng: np.random.Generator, size: int, margin: float) -> tuple[float, float]:
    lo, hi = margin * size, (1 - margin) * size
    return rng.uniform(lo, hi), rng.uniform(lo, hi)


def _draw_scratch(rng: np.random.Generator, gray: np.ndarray) -> None:
    size = gray.shape[0]
    cx, cy = _centre(rng, size, 0.25)
    length = rng.uniform(0.3, 0.65) * size
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.15, 0.15) * length
    t = np.linspace(-0.5, 0.5, 9)
    # A gentle arc: points along the direction, offset sideways by a parabola.
    px = cx + t * length * np.cos(angle) - bend * (1 - 4 * t**2) * np.sin(angle)
    py = cy + t * length * np.sin(angle) + bend * (1 - 4 * t**2) * np.cos(angle)
    scale = 4  # draw at 4x with sub-pixel coordinates, for smooth thin lines
    mask = np.zeros((size * scale, size * scale), np.uint8)
    pts = np.stack([px, py], axis=1) * scale
    thickness = max(1, round(rng.uniform(0.009, 0.02) * size * scale))
    cv2.polylines(mask, [pts.round().astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    sign = 1.0 if rng.random() < 0.5 else -1.0
    gray += sign * rng.uniform(0.14, 0.35) * mask


def _draw_dent(rng: np.random.Generator, gray: np.ndarray) -> None:
    size = gray.shape[0]
    cx, cy = _centre(rng, size, 0.22)
    rx, ry = rng.uniform(0.06, 0.14, size=2) * size
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    depth = -np.exp(-((u / rx) ** 2 + (v / ry) ** 2))
    # Lambert-like shading of the depression's slope under a light from a random side.
    gy, gx = np.gradient(depth)
    light = rng.uniform(0, 2 * np.pi)
    shade = gx * np.cos(light) + gy * np.sin(light)
    shade /= np.abs(shade).max() + 1e-6
    gray += rng.uniform(0.14, 0.3) * shade + rng.uniform(0.02, 0.06) * depth


def _stain(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An alpha mask (HxW) and an RGB colour for a soft, irregular blot."""
    cx, cy = _centre(rng, size, 0.25)
    rx, ry = rng.uniform(0.08, 0.18, size=2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ellipse = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    wobble = 0.45 * _smooth_noise(rng, size, max(2, size // 10))
    mask = (ellipse + wobble < 1.0).astype(np.float32)
    soft = max(1, int(size * 0.02)) * 2 + 1
    mask = cv2.GaussianBlur(mask, (soft, soft), 0)
    alpha = rng.uniform(0.3, 0.6) * mask
    colours = ((0.35, 0.22, 0.1), (0.15, 0.15, 0.15), (0.45, 0.3, 0.12), (0.2, 0.25, 0.3))
    colour = np.array(colours[rng.integers(len(colours))], np.float32)
    return alpha, colour * rng.uniform(0.7, 1.2)


def draw_image(seed: int, class_index: int, index: int, size: int) -> np.ndarray:
    """Image `index` of class `CLASSES[class_index]`, HxWx3 uint8 RGB."""
    rng = np.random.default_rng([seed, class_index, index])
    gray = _texture(rng, size)
    name = CLASSES[class_index]
    if name == "scratch":
        _draw_scratch(rng, gray)
    elif name == "dent":
        _draw_dent(rng, gray)
    # Dust: tiny specks in every class, so "any blemish" is not the answer.
    for _ in range(rng.integers(0, 4)):
        x, y = rng.integers(0, size, size=2)
        radius = max(1, round(rng.uniform(0.004, 0.012) * size))
        cv2.circle(gray, (int(x), int(y)), radius, float(rng.uniform(0.1, 0.9)), -1, cv2.LINE_AA)
    tint = rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    rgb = gray[:, :, None] * tint
    if name == "stain":
        alpha, colour = _stain(rng, size)
        rgb = rgb * (1 - alpha[:, :, None]) + colour * alpha[:, :, None]
    # Uneven lighting: a linear gradient and a vignette, then gain and sensor noise.
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) / size) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.35) * (xx * np.cos(angle) + yy * np.sin(angle))
    light -= rng.uniform(0, 0.5) * (xx**2 + yy**2)
    rgb = rgb * (light * rng.uniform(0.8, 1.2))[:, :, None]
    rgb += rng.uniform(0.005, 0.02) * rng.standard_normal(rgb.shape).astype(np.float32)
    sigma = rng.uniform(0, 0.8)
    if sigma > 0.3:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_dataset(
    out_dir: str | Path,
    images_per_class: int,
    size: int,
    seed: int,
    image_format: ImageFormat = "png",
    threads: int = 1,
) -> Path:
    """Write the built-in data set as `out_dir/<class>/<class>_<i>.<format>`.

    The folder appears complete or not at all: images are drawn into a temporary sibling folder,
    which is renamed into place at the end.
    """
    if image_format not in FORMATS:
        raise CvpipeError(f"synth: format must be one of {FORMATS}, not {image_format!r}")
    if images_per_class < 1 or size < 16:
        raise CvpipeError("synth: images_per_class must be >= 1 and size >= 16")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in CLASSES:
        (tmp / name).mkdir(parents=True)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 3] if image_format == "png" else []
    params += [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []

    def write(job: tuple[int, int]) -> None:
        c, i = job
        image = draw_image(seed, c, i, size)
        path = tmp / CLASSES[c] / f"{CLASSES[c]}_{i:04d}.{image_format}"
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"could not write {path}")

    jobs = [(c, i) for c in range(len(CLASSES)) for i in range(images_per_class)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(write, jobs))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %d images (%d classes, %d px) to %s", len(jobs), len(CLASSES), size, out)
    return out
