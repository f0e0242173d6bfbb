"""The augmentation policy: batched tensor ops on the training device.

Input is a uint8 batch straight from the cache (N x S x S x 3, channels last); output is a float
N x 3 x S x S batch, normalised with the data set's mean and std. Because the cache's memory is
already channels-last, the permuted view needs no copy when training in `channels_last`.

Train-time policy (each part per image, switched off by setting it to 0 / false):

- horizontal and vertical flips (surfaces have no up or left);
- `rot90`: a random multiple of 90 degrees, exact (no resampling; needs square images);
- one affine warp with reflection padding: rotation in [-rotate, rotate] degrees, isotropic
  scale in [1 - scale, 1 + scale], shift up to `translate` of the image side;
- brightness and contrast jitter: x -> (x - m) * c + m + b with c in [1 - contrast, 1 + contrast],
  b in [-brightness, brightness] (m the image's mean), then clamped to [0, 1].

All randomness comes from the `torch.Generator` passed in, so a run is reproducible from the seed.
The policy's settings, `AugmentPolicy`, live in `cvpipe.settings` (defaults: the config schema's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cvpipe.settings import AugmentPolicy


def to_float(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1], in the requested memory format."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; `mean`/`std` are 3-element tensors on x's device."""
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _affine(x: torch.Tensor, p: AugmentPolicy, g: torch.Generator, flip_x, flip_y) -> torch.Tensor:
    """One bilinear warp per image: rotation, zoom, shift and the flips, folded into one matrix."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, -p.rotate, p.rotate, g, device) * (math.pi / 180)
    scale = _uniform(n, 1 - p.scale, 1 + p.scale, g, device)
    shift = _uniform(2 * n, -2 * p.translate, 2 * p.translate, g, device).view(n, 2)
    # theta maps output to input coordinates in [-1, 1]: zooming in by `scale` means sampling
    # a smaller input area, hence the division. Flipping the output negates a column.
    sx = torch.where(flip_x, -1.0, 1.0) / scale
    sy = torch.where(flip_y, -1.0, 1.0) / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, shift[:, 0]], 1),
            torch.stack([sin * sx, cos * sy, shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def train_transform(
    batch: torch.Tensor,
    policy: AugmentPolicy,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator,
    channels_last: bool = False,
) -> torch.Tensor:
    """Augment and normalise a uint8 batch already on the training device."""
    x = to_float(batch, channels_last)
    n, device = x.shape[0], x.device
    no = torch.zeros(n, dtype=torch.bool, device=device)
    flip_x = torch.rand(n, generator=generator, device=device) < 0.5 if policy.hflip else no
    flip_y = torch.rand(n, generator=generator, device=device) < 0.5 if policy.vflip else no
    if policy.rot90:
        turns = torch.randint(0, 4, (n,), generator=generator, device=device).view(n, 1, 1, 1)
        # Every rotation of the whole batch, then a per-image pick: indexing only the chosen
        # images (`nonzero`) would make the host wait for the GPU on every step.
        x = torch.where(
            turns == 1,
            x.rot90(1, dims=(2, 3)),
            torch.where(
                turns == 2,
                x.rot90(2, dims=(2, 3)),
                torch.where(turns == 3, x.rot90(3, dims=(2, 3)), x),
            ),
        )
    if policy.rotate or policy.scale or policy.translate:
        x = _affine(x, policy, generator, flip_x, flip_y)
    else:  # flips alone need no resampling
        x = torch.where(flip_x.view(n, 1, 1, 1), x.flip(3), x)
        x = torch.where(flip_y.view(n, 1, 1, 1), x.flip(2), x)
    if policy.brightness or policy.contrast:
        c = _uniform(n, 1 - policy.contrast, 1 + policy.contrast, generator, device).view(
            n, 1, 1, 1
        )
        b = _uniform(n, -policy.brightness, policy.brightness, generator, device).view(n, 1, 1, 1)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m + b).clamp_(0, 1)
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def eval_transform(
    batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """Normalise a uint8 batch for evaluation (no augmentation)."""
    return normalize(to_float(batch, channels_last), mean, std)
