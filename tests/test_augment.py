"""The augmentation policy: shapes, determinism, and that it is what it claims to be."""

import torch

from cvpipe.augment import AugmentPolicy, eval_transform, train_transform

MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])


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
    off = AugmentPolicy(hflip=False, vflip=False)
    x = batch()
    torch.testing.assert_close(
        train_transform(x, off, MEAN, STD, torch.Generator()), eval_transform(x, MEAN, STD)
    )


def test_flips_only_permute_pixels_and_some_images_flip():
    x = batch()
    out = train_transform(x, AugmentPolicy(), MEAN, STD, torch.Generator().manual_seed(1))
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
    policy = AugmentPolicy(hflip=True, vflip=True, translate=1e-9)
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
