"""Mixup and CutMix of training batches, with the soft targets they train against.

Semantics of torchvision's reference (`transforms.v2.MixUp`/`CutMix`) and timm's `Mixup`: per
batch, each image is mixed with its neighbour in the batch (`roll(1, 0)`) with one lambda ~
Beta(alpha, alpha). Mixup blends the whole images, `lam * x + (1 - lam) * x_rolled`; CutMix pastes
a box of the neighbour whose sides are `sqrt(1 - lam)` of the image's, centred at a uniform random
pixel and clipped at the border, and then sets lambda to the share of the image left unpasted.
With both alphas above 0, each batch takes one of the two with probability 0.5 (timm's
`switch_prob`). Targets become `lam * onehot(y) + (1 - lam) * onehot(y_rolled)`.

Label smoothing is left to the loss: `nn.CrossEntropyLoss(label_smoothing=e)` with probability
targets `t` trains against `(1 - e) * t + e / C`, which is the mix of the two smoothed one-hots,
and its loss with probability targets is the soft-target cross-entropy `-sum(t * log_softmax)`.

Everything is drawn from the training `torch.Generator` (on the training device, so a resumed run
replays it) and computed with tensor ops: no step waits for the GPU to say which method or box
was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvpipe.errors import CvpipeError


def beta(alpha: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a 0-dim float64 tensor on `device`: the ratio of two
    Gamma(alpha) draws (`torch.distributions` takes no generator, so it could not replay)."""
    gammas = torch._standard_gamma(
        torch.full((2,), alpha, dtype=torch.float64, device=device), generator=generator
    )
    return gammas[0] / gammas.sum().clamp_min(torch.finfo(torch.float64).tiny)


def cutmix_box(
    lam: torch.Tensor, row: torch.Tensor, col: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box CutMix pastes for `lam` around the pixel (`row`, `col`) (integer-valued 0-dim
    tensors): a bool H x W mask, and lambda corrected to the exact unpasted share of the image.
    Python numbers only enter as scalars: a tensor made from them would be a blocking copy to
    the GPU every step."""
    side = 0.5 * torch.sqrt(1 - lam)  # half the box side, as a share of the image side
    half_h, half_w = (side * height).floor(), (side * width).floor()
    top, bottom = (row - half_h).clamp_min(0), (row + half_h).clamp_max(height)
    left, right = (col - half_w).clamp_min(0), (col + half_w).clamp_max(width)
    rows = torch.arange(height, device=lam.device)
    cols = torch.arange(width, device=lam.device)
    mask = ((rows >= top) & (rows < bottom))[:, None] & ((cols >= left) & (cols < right))[None, :]
    return mask, 1 - (bottom - top) * (right - left) / (height * width)


def blend(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`weight * images + (1 - weight) * images rolled by one` (`weight` broadcasts, H x W)."""
    weight = weight.to(images.dtype)
    return images * weight + images.roll(1, 0) * (1 - weight)


def mix_targets(labels: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probability targets: `lam * onehot(labels) + (1 - lam) * onehot(labels rolled by one)`."""
    onehot = F.one_hot(labels, num_classes).float()
    lam = lam.float()
    return onehot * lam + onehot.roll(1, 0) * (1 - lam)


@dataclass(frozen=True)
class Mixing:
    """Mixup and/or CutMix of a batch (an alpha of 0 switches that one off)."""

    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int
    generator: torch.Generator

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, name) >= 0:
                raise CvpipeError(
                    f"{name} must be 0 (off) or positive, not {getattr(self, name)!r}"
                )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A float N x C x H x W batch and its labels -> the mixed batch and soft targets."""
        device, (height, width) = images.device, images.shape[-2:]
        # A fixed number of draws per batch: [switch, centre row, centre column].
        uniform = torch.rand(3, generator=self.generator, device=device, dtype=torch.float64)
        weight = lam = torch.ones((), dtype=torch.float64, device=device)
        if self.mixup_alpha > 0:
            weight = lam = beta(self.mixup_alpha, self.generator, device)
        if self.cutmix_alpha > 0:
            row, col = (uniform[1] * height).floor(), (uniform[2] * width).floor()
            box, box_lam = cutmix_box(
                beta(self.cutmix_alpha, self.generator, device), row, col, height, width
            )
            # With CutMix alone every batch takes it (a uniform draw is always below 1).
            use_cutmix = uniform[0] < (0.5 if self.mixup_alpha > 0 else 1.0)
            weight = torch.where(use_cutmix, (~box).double(), weight)
            lam = torch.where(use_cutmix, box_lam, lam)
        return blend(images, weight), mix_targets(labels, lam, self.num_classes)
