"""The augmentation policy: shapes, determinism, and that it is what it claims to be."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

from cvpipe.augment import (
    AugmentPolicy,
    crop_boxes,
    eval_transform,
    normalize,
    to_float,
    train_transform,
)
from cvpipe.settings import PRESETS

MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
# Every part off; a test switches on what it checks (the field defaults are the surface preset).
OFF = AugmentPolicy(hflip=False, vflip=False, rot90=False, brightness=0, contrast=0)


def batch(n=16, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def test_eval_transform_is_normalised_nchw():
    x = batch()
    out = eval_transform(x, MEAN, STD)
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    expected = (x.permute(0, 3, 1, 2).float() / 255 - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_policy_off_equals_eval_transform():
    x = batch()
    torch.testing.assert_close(
        train_transform(x, OFF, MEAN, STD, torch.Generator()), eval_transform(x, MEAN, STD)
    )


def test_flips_only_permute_pixels_and_some_images_flip():
    x = batch()
    flips = replace(OFF, hflip=True, vflip=True)
    out = train_transform(x, flips, MEAN, STD, torch.Generator().manual_seed(1))
    ref = eval_transform(x, MEAN, STD)
    changed = 0
    for i in range(len(x)):
        candidates = [ref[i], ref[i].flip(2), ref[i].flip(1), ref[i].flip(1).flip(2)]
        assert any(torch.allclose(out[i], c) for c in candidates)
        changed += not torch.allclose(out[i], ref[i])
    assert 0 < changed < len(x)


def test_same_generator_seed_same_batch_and_channels_last():
    policy = AugmentPolicy(rotate=180, scale=0.1, translate=0.1, brightness=0.2, contrast=0.2)
    x = batch()
    a = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(3), channels_last=True)
    b = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(3))
    c = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(4))
    assert a.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_flips_folded_into_the_warp_are_exact_flips():
    # A warp that does nothing else (translate ~ 0) must reproduce plain flips exactly.
    policy = replace(OFF, hflip=True, vflip=True, translate=1e-9)
    x = batch()
    out = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(2))
    ref = eval_transform(x, MEAN, STD)
    kinds = set()
    for i in range(len(x)):
        candidates = {
            "none": ref[i],
            "h": ref[i].flip(2),
            "v": ref[i].flip(1),
            "hv": ref[i].flip(1).flip(2),
        }
        match = [k for k, c in candidates.items() if torch.allclose(out[i], c, atol=1e-4)]
        assert len(match) == 1
        kinds.add(match[0])
    assert kinds == {"none", "h", "v", "hv"}


def rot90_by_index(x, turns):
    """The earlier rot90 step (indexing the chosen images), kept as the reference."""
    x = x.clone()
    for k in (1, 2, 3):
        chosen = (turns == k).nonzero().squeeze(1)
        if chosen.numel():
            x[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    return x


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_rot90_is_the_same_as_rotating_the_chosen_images(channels_last):
    policy = replace(OFF, hflip=True, vflip=True, rot90=True)
    x = batch(n=32)
    out = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(5), channels_last)
    # The reference draws the same numbers from the same generator, in the same order.
    g = torch.Generator().manual_seed(5)
    flip_x = torch.rand(32, generator=g) < 0.5
    flip_y = torch.rand(32, generator=g) < 0.5
    turns = torch.randint(0, 4, (32,), generator=g)
    ref = rot90_by_index(to_float(x, channels_last), turns)
    ref = torch.where(flip_x.view(32, 1, 1, 1), ref.flip(3), ref)
    ref = torch.where(flip_y.view(32, 1, 1, 1), ref.flip(2), ref)
    assert torch.equal(out, normalize(ref, MEAN, STD))
    assert set(turns.tolist()) == {0, 1, 2, 3}  # every branch was exercised


class OpLog(TorchDispatchMode):
    """Names of the aten ops run inside the `with` block."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_augmentation_never_waits_for_the_device():
    """No op whose result the host must read (each is a GPU sync on CUDA)."""
    policy = AugmentPolicy(rot90=True, rotate=10, scale=0.1, brightness=0.1, contrast=0.1)
    with OpLog() as log:
        train_transform(batch(), policy, MEAN, STD, torch.Generator().manual_seed(0))
    assert "aten.rot90" in log.ops  # the trace sees the ops
    syncing = {"aten.nonzero", "aten.item", "aten._local_scalar_dense", "aten.masked_select"}
    assert not syncing & set(log.ops)


NATURAL = AugmentPolicy.resolve({"preset": "natural"})


def test_natural_preset_is_torchvision_like_and_changes_the_cache_side():
    assert NATURAL.random_resized_crop and NATURAL.hflip
    assert not (NATURAL.vflip or NATURAL.rot90)
    assert NATURAL.crop_scale == (0.25, 1.0) and NATURAL.crop_ratio == (0.75, 4 / 3)
    assert AugmentPolicy.resolve({"preset": "natural", "hflip": False}).hflip is False
    assert AugmentPolicy.resolve({"preset": "surface"}) == AugmentPolicy()
    assert set(PRESETS) == {"natural", "surface"}


def test_natural_policy_crops_a_larger_cache_to_the_training_size():
    x = batch(n=8, size=37)
    g = torch.Generator().manual_seed(0)
    out = train_transform(x, NATURAL, MEAN, STD, g, channels_last=True, size=32)
    assert out.shape == (8, 3, 32, 32) and out.is_contiguous(memory_format=torch.channels_last)
    again = train_transform(x, NATURAL, MEAN, STD, torch.Generator().manual_seed(0), size=32)
    torch.testing.assert_close(out, again)


def test_eval_transform_takes_the_centre_crop():
    x = batch(size=37)
    torch.testing.assert_close(
        eval_transform(x, MEAN, STD, size=32), eval_transform(x[:, 2:34, 2:34], MEAN, STD)
    )
    # without a random crop, training sees the same centre crop
    policy_off = replace(OFF, random_resized_crop=False)
    torch.testing.assert_close(
        train_transform(x, policy_off, MEAN, STD, torch.Generator(), size=32),
        eval_transform(x, MEAN, STD, size=32),
    )


def test_a_whole_image_crop_is_a_plain_resize_and_flips_exactly():
    whole = replace(OFF, random_resized_crop=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    x = batch(n=8, size=40)
    out = train_transform(x, whole, MEAN, STD, torch.Generator().manual_seed(0), size=20)
    resized = F.interpolate(to_float(x, False), size=(20, 20), mode="bilinear", antialias=False)
    torch.testing.assert_close(out, normalize(resized, MEAN, STD), atol=1e-5, rtol=0)
    flipped = train_transform(
        x, replace(whole, hflip=True), MEAN, STD, torch.Generator().manual_seed(1), size=20
    )
    ref = normalize(resized, MEAN, STD)
    kinds = {
        next(k for k, c in {"none": r, "h": r.flip(2), "?": o}.items() if o.allclose(c, atol=1e-5))
        for o, r in zip(flipped, ref, strict=True)
    }
    assert kinds == {"h", "none"}


DRAWS = 20_000


def draws(policy):
    cx, cy, w, h = crop_boxes(DRAWS, policy, torch.Generator().manual_seed(0), "cpu")
    assert bool(((cx.abs() + w <= 1 + 1e-6) & (cy.abs() + h <= 1 + 1e-6)).all())  # inside
    return (w * h).numpy(), np.log((w / h).numpy())


def test_crop_area_and_ratio_are_uniform_when_every_candidate_fits():
    policy = replace(NATURAL, crop_scale=(0.1, 0.5))  # s * r <= 2/3: every box fits
    area, log_ratio = draws(policy)
    low, high = math.log(0.75), math.log(4 / 3)
    assert area.min() >= 0.1 - 1e-6 and area.max() <= 0.5 + 1e-6
    assert low - 1e-6 <= log_ratio.min() and log_ratio.max() <= high + 1e-6
    assert stats.kstest(area, stats.uniform(0.1, 0.4).cdf).pvalue > 0.001
    assert stats.kstest(log_ratio, stats.uniform(low, high - low).cdf).pvalue > 0.001


def test_crop_draws_follow_the_configured_ranges_truncated_to_the_image():
    """scale [0.25, 1]: a box fits if s <= min(r, 1/r); the first fitting candidate of ten is
    a draw from the uniform distribution conditioned on fitting (as torchvision's loop)."""
    area, log_ratio = draws(NATURAL)
    low, high = math.log(0.75), math.log(4 / 3)
    assert area.min() >= 0.25 - 1e-6 and area.max() <= 1 + 1e-6
    assert low - 1e-6 <= log_ratio.min() and log_ratio.max() <= high + 1e-6
    # The conditional means on a fine grid of (s, log r).
    s, lr = np.meshgrid(np.linspace(0.25, 1, 1501), np.linspace(low, high, 1501))
    fits = s <= np.exp(-np.abs(lr))
    assert abs(area.mean() - s[fits].mean()) < 0.005
    assert abs(log_ratio.mean() - lr[fits].mean()) < 0.005
    assert abs(np.abs(log_ratio).mean() - np.abs(lr[fits]).mean()) < 0.005
    # Conditioned on a given ratio, the area is uniform up to what fits.
    near_square = np.abs(log_ratio) < 0.02
    upper = math.exp(-0.02)
    chosen = area[near_square & (area <= upper)]
    assert stats.kstest(chosen, stats.uniform(0.25, upper - 0.25).cdf).pvalue > 0.001


def test_no_candidate_fits_gives_the_centre_crop():
    policy = replace(NATURAL, crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))  # never fits
    cx, cy, w, h = crop_boxes(100, policy, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(w, torch.ones(100)) and torch.allclose(h, torch.full((100,), 0.5))
    assert torch.equal(cx, torch.zeros(100)) and cy.abs().max() <= 0.5


def test_saturation_keeps_grey_images_and_changes_coloured_ones():
    policy = replace(OFF, saturation=0.5)
    grey = batch(n=8)[..., :1].expand(-1, -1, -1, 3).contiguous()
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(
        train_transform(grey, policy, MEAN, STD, g), eval_transform(grey, MEAN, STD)
    )
    x = batch(n=8)
    assert not torch.allclose(
        train_transform(x, policy, MEAN, STD, g), eval_transform(x, MEAN, STD)
    )


def test_random_erasing_sets_a_rectangle_to_the_mean():
    x = torch.full((64, 32, 32, 3), 200, dtype=torch.uint8)
    mean, std = torch.zeros(3), torch.ones(3)
    out = train_transform(
        x, replace(OFF, random_erasing=1.0), mean, std, torch.Generator().manual_seed(0)
    )
    erased = (out == 0).all(dim=1).float().mean(dim=(1, 2))  # share of pixels per image
    assert bool((erased > 0).all()) and erased.max() < 0.4
    none = train_transform(
        x, replace(OFF, random_erasing=0.5), mean, std, torch.Generator().manual_seed(0)
    )
    share = ((none == 0).all(dim=1).any(dim=(1, 2))).float().mean()
    assert 0.25 < share < 0.75


def test_trivial_augment_is_reproducible_and_keeps_the_shape():
    policy = replace(NATURAL, trivial_augment=True)
    x = batch(n=16, size=37)
    a = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(0), size=32)
    b = train_transform(x, policy, MEAN, STD, torch.Generator().manual_seed(0), size=32)
    assert a.shape == (16, 3, 32, 32)
    torch.testing.assert_close(a, b)


def test_natural_augmentation_never_waits_for_the_device():
    policy = replace(NATURAL, random_erasing=0.5)
    with OpLog() as log:
        train_transform(batch(size=37), policy, MEAN, STD, torch.Generator(), size=32)
    assert "aten.grid_sampler_2d" in log.ops
    syncing = {"aten.nonzero", "aten.item", "aten._local_scalar_dense", "aten.masked_select"}
    assert not syncing & set(log.ops)
