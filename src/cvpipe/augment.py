"""The augmentation policy: batched tensor ops on the training device.

Input is a uint8 batch straight from the cache (N x S x S x 3, channels last, S the cache side);
output is a float N x 3 x s x s batch (s the training size), normalised with the data set's mean
and std. Because the cache's memory is already channels-last, the permuted view needs no copy
when training in `channels_last`.

Train-time policy (each part per image, switched off by setting it to 0 / false; the presets
`natural` and `surface` in `cvpipe.settings.PRESETS` choose them):

- random resized crop (torchvision's RandomResizedCrop): area share in `crop_scale` of the cache
  image, log-uniform aspect ratio in `crop_ratio`; ten candidates per image, the first that fits,
  else the centre crop; resampled to s x s. Without it, an S > s cache is centre-cropped;
- horizontal and vertical flips (surfaces have no up or left);
- `rot90`: a random multiple of 90 degrees, exact (no resampling; needs square images);
- one affine warp: rotation in [-rotate, rotate] degrees, isotropic scale in [1 - scale,
  1 + scale], shift up to `translate` of the image side, folded into one bilinear resampling with
  the crop and the flips (reflection padding);
- `trivial_augment`: one op of torchvision's TrivialAugmentWide per image, op and magnitude drawn
  from our generator. A Python loop over the batch: 4,800 img/s against 6,000 img/s for the
  surface policy on 64 x 64 batches of 64 on 2 CPU cores (the op on a whole batch, 26,600 img/s,
  would give every image the same op);
- brightness, contrast and saturation jitter: x -> (x - m) * c + m + b with c in [1 - contrast,
  1 + contrast], b in [-brightness, brightness] (m the image's mean), then a blend with each
  pixel's grey by a factor in [1 - saturation, 1 + saturation], clamped to [0, 1];
- random erasing (after normalisation, as torchvision's RandomErasing): with probability
  `random_erasing`, a rectangle of 2-33 % of the area, aspect ratio in [0.3, 3.3], set to 0.

All randomness comes from the `torch.Generator` passed in, so a run is reproducible from the seed
and resumes mid-epoch to the same result. A part that is off draws nothing. The policy's settings,
`AugmentPolicy`, live in `cvpipe.settings`.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from cvpipe.settings import AugmentPolicy

Batch = TypeVar("Batch", torch.Tensor, np.ndarray)


def center_crop(batch: Batch, size: int) -> Batch:
    """The centre `size` x `size` of a N x S x S x C batch, tensor or array (a view; `batch`
    itself if S = size), the offset as `cvpipe.preprocess.resize_square`'s crop."""
    side = batch.shape[1]
    if side == size:
        return batch
    if side < size:
        raise ValueError(f"cannot crop {size} px from {side} px images")
    top = (side - size) // 2
    return batch[:, top : top + size, top : top + size]


def to_float(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1], in the requested memory format."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; `mean`/`std` are 3-element tensors on x's device."""
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _uniform(n, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


# Candidate boxes per image, as torchvision's RandomResizedCrop and RandomErasing try.
ATTEMPTS = 10


def _first_fit(fits: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row of N x ATTEMPTS (0 where none: check `fits.any(1)`)."""
    return fits.to(torch.uint8).argmax(dim=1, keepdim=True)


def _candidates(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATTEMPTS boxes per image: width and height as fractions of the side, the area share
    uniform in `scale`, the aspect ratio (width / height) log-uniform in `ratio`."""
    area = _uniform((n, ATTEMPTS), scale[0], scale[1], g, device)
    log_ratio = _uniform((n, ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), g, device)
    aspect = torch.exp(log_ratio)
    return torch.sqrt(area * aspect), torch.sqrt(area / aspect)


def crop_boxes(
    n: int, policy: AugmentPolicy, g: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random resized crops of square images: centre x, centre y (in [-1, 1]), width, height
    (fractions of the side). The first of ATTEMPTS candidates that fits, else torchvision's
    fallback: the centre crop of the whole image, narrowed to the nearest allowed ratio."""
    w, h = _candidates(n, policy.crop_scale, policy.crop_ratio, g, device)
    fits = (w <= 1) & (h <= 1)
    pick = _first_fit(fits)
    found = fits.any(dim=1)
    low, high = policy.crop_ratio
    fallback_w = min(1.0, high) if low <= 1 else 1.0
    fallback_h = 1.0 if low <= 1 else 1 / low
    w = torch.where(found, w.gather(1, pick).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, pick).squeeze(1), fallback_h)
    # The box lies inside the image: its centre within (1 - size) of the middle.
    position = torch.rand((n, 2), generator=g, device=device) * 2 - 1
    return position[:, 0] * (1 - w), position[:, 1] * (1 - h), w, h


def _warp(
    x: torch.Tensor, p: AugmentPolicy, g: torch.Generator, flip_x, flip_y, size: int
) -> torch.Tensor:
    """One bilinear resampling per image to size x size: the random resized crop, rotation,
    zoom, shift and the flips, folded into one matrix."""
    n, device = x.shape[0], x.device
    ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
    angle, scale, shift = zeros, ones, torch.zeros(n, 2, device=device)
    if p.rotate or p.scale or p.translate:
        angle = _uniform(n, -p.rotate, p.rotate, g, device) * (math.pi / 180)
        scale = _uniform(n, 1 - p.scale, 1 + p.scale, g, device)
        shift = _uniform(2 * n, -2 * p.translate, 2 * p.translate, g, device).view(n, 2)
    # theta maps output to input coordinates in [-1, 1]: zooming in by `scale` means sampling
    # a smaller input area, hence the division. Flipping the output negates a column.
    sx = torch.where(flip_x, -1.0, 1.0) / scale
    sy = torch.where(flip_y, -1.0, 1.0) / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    rows = [[cos * sx, -sin * sy, shift[:, 0]], [sin * sx, cos * sy, shift[:, 1]]]
    if p.random_resized_crop:  # then into the crop box: input = centre + size * warped
        cx, cy, w, h = crop_boxes(n, p, g, device)
        rows = [[w * a for a in rows[0]], [h * a for a in rows[1]]]
        rows[0][2], rows[1][2] = rows[0][2] + cx, rows[1][2] + cy
    theta = torch.stack([torch.stack(row, 1) for row in rows], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rot90(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    turns = torch.randint(0, 4, (n,), generator=g, device=x.device).view(n, 1, 1, 1)
    # Every rotation of the whole batch, then a per-image pick: indexing only the chosen
    # images (`nonzero`) would make the host wait for the GPU on every step.
    return torch.where(
        turns == 1,
        x.rot90(1, dims=(2, 3)),
        torch.where(
            turns == 2,
            x.rot90(2, dims=(2, 3)),
            torch.where(turns == 3, x.rot90(3, dims=(2, 3)), x),
        ),
    )


def _trivial_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One op of TrivialAugmentWide per image (float N x 3 x s x s in [0, 1]), op, magnitude
    bin and sign drawn from `g`: one wait for the device per batch, then a loop over images."""
    from torchvision.transforms import v2  # only when asked for: torchvision is slow to import

    augment = v2.TrivialAugmentWide()
    space = list(augment._AUGMENTATION_SPACE.items())
    n, bins = x.shape[0], augment.num_magnitude_bins
    draws = torch.stack(
        [
            torch.randint(0, len(space), (n,), generator=g, device=x.device),
            torch.randint(0, bins, (n,), generator=g, device=x.device),
            (torch.rand(n, generator=g, device=x.device) < 0.5).long(),
        ],
        1,
    ).tolist()
    out = []
    for image, (op, level, negative) in zip(x, draws, strict=True):
        name, (magnitudes_of, signed) = space[op]
        magnitudes = magnitudes_of(bins, x.shape[2], x.shape[3])
        magnitude = float(magnitudes[level]) if magnitudes is not None else 0.0
        magnitude *= -1 if signed and negative else 1
        out.append(
            augment._apply_image_or_video_transform(
                image, name, magnitude, interpolation=augment.interpolation, fill=augment._fill
            )
        )
    return torch.stack(out).clamp_(0, 1)


def _jitter(x: torch.Tensor, p: AugmentPolicy, g: torch.Generator) -> torch.Tensor:
    """Brightness and contrast, then saturation, each factor per image."""
    n, device = x.shape[0], x.device
    if p.brightness or p.contrast:
        c = _uniform(n, 1 - p.contrast, 1 + p.contrast, g, device).view(n, 1, 1, 1)
        b = _uniform(n, -p.brightness, p.brightness, g, device).view(n, 1, 1, 1)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m + b).clamp_(0, 1)
    if p.saturation:
        s = _uniform(n, 1 - p.saturation, 1 + p.saturation, g, device).view(n, 1, 1, 1)
        weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
        grey = (x * weights).sum(dim=1, keepdim=True)
        x = ((x - grey) * s + grey).clamp_(0, 1)
    return x


# torchvision RandomErasing's defaults: the erased share of the area and its aspect ratio.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def _erase(x: torch.Tensor, probability: float, g: torch.Generator) -> torch.Tensor:
    """Per image with `probability`: a random rectangle set to 0 (the mean, once normalised).
    The first of ATTEMPTS candidates that fits strictly inside; none fits, nothing is erased."""
    n, device, side = x.shape[0], x.device, x.shape[2]
    w, h = _candidates(n, ERASE_SCALE, ERASE_RATIO, g, device)
    fits = (w < 1) & (h < 1)
    pick = _first_fit(fits)
    w, h = w.gather(1, pick), h.gather(1, pick)
    corner = torch.rand((n, 2), generator=g, device=device)
    left, top = corner[:, :1] * (1 - w), corner[:, 1:] * (1 - h)
    erase = (torch.rand(n, generator=g, device=device) < probability) & fits.any(dim=1)
    centres = (torch.arange(side, device=device) + 0.5) / side
    cols = (centres >= left) & (centres < left + w)  # N x side
    rows = (centres >= top) & (centres < top + h)
    mask = rows.view(n, 1, side, 1) & cols.view(n, 1, 1, side) & erase.view(n, 1, 1, 1)
    return x.masked_fill(mask, 0.0)


def train_transform(
    batch: torch.Tensor,
    policy: AugmentPolicy,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator,
    channels_last: bool = False,
    size: int | None = None,
) -> torch.Tensor:
    """Augment and normalise a uint8 batch already on the training device, to `size` px
    (None: the batch's own side)."""
    size = size or batch.shape[1]
    if not policy.random_resized_crop:
        batch = center_crop(batch, size)
    x = to_float(batch, channels_last)
    n, device = x.shape[0], x.device
    no = torch.zeros(n, dtype=torch.bool, device=device)
    flip_x = torch.rand(n, generator=generator, device=device) < 0.5 if policy.hflip else no
    flip_y = torch.rand(n, generator=generator, device=device) < 0.5 if policy.vflip else no
    if policy.rot90:
        x = _rot90(x, generator)
    if policy.random_resized_crop or policy.rotate or policy.scale or policy.translate:
        x = _warp(x, policy, generator, flip_x, flip_y, size)
    else:  # flips alone need no resampling
        x = torch.where(flip_x.view(n, 1, 1, 1), x.flip(3), x)
        x = torch.where(flip_y.view(n, 1, 1, 1), x.flip(2), x)
    if policy.trivial_augment:
        x = _trivial_augment(x, generator)
    x = normalize(_jitter(x, policy, generator), mean, std)
    if policy.random_erasing:
        x = _erase(x, policy.random_erasing, generator)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def eval_transform(
    batch: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    channels_last: bool = False,
    size: int | None = None,
) -> torch.Tensor:
    """Normalise a uint8 batch for evaluation (no augmentation), after taking its centre `size`
    crop (torchvision's Resize + CenterCrop, the resize done by preprocess; None = whole)."""
    if size is not None:
        batch = center_crop(batch, size)
    return normalize(to_float(batch, channels_last), mean, std)
