"""The augmentation policy: shapes, determinism, and that it is what it claims to be."""

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cvpipe.augment import AugmentPolicy, eval_transform, normalize, to_float, train_transform

MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
# Every part off; a test switches on what it checks (the defaults are the schema's).
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
