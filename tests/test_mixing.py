"""Mixup and CutMix: the mixed batch and soft targets for a given lambda and box, the soft-target
loss, reproducible draws, and training runs with them on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from train_steps import build

from cvpipe.errors import CvpipeError
from cvpipe.mixing import Mixing, beta, blend, cutmix_box, mix_targets
from cvpipe.train import TrainConfig, train


def batch(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    return images, torch.tensor([0, 1, 2, 3])[:n]


def test_mixup_is_the_blend_with_the_neighbouring_image():
    images, labels = batch()
    lam = torch.tensor(0.3, dtype=torch.float64)
    mixed = blend(images, lam)
    for i in range(4):  # image i is mixed with image i - 1 (the batch rolled by one)
        expected = 0.3 * images[i] + 0.7 * images[i - 1]
        torch.testing.assert_close(mixed[i], expected)
    targets = mix_targets(labels, lam, num_classes=5)
    assert targets[1].tolist() == pytest.approx([0.7, 0.3, 0, 0, 0])
    assert targets[0].tolist() == pytest.approx([0.3, 0, 0, 0.7, 0])  # label 3 rolled in
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_pastes_the_box_and_corrects_lambda_to_its_area():
    images, labels = batch(size=10)
    # lam 0.64: the box's sides are sqrt(0.36) = 0.6 of the image's: 3 px either side of the
    # centre (row 2, column 6), clipped at the top: rows 0..4, columns 3..8.
    lam = torch.tensor(0.64, dtype=torch.float64)
    row, col = torch.tensor(2.0, dtype=torch.float64), torch.tensor(6.0, dtype=torch.float64)
    box, exact = cutmix_box(lam, row, col, 10, 10)
    expected_box = torch.zeros(10, 10, dtype=torch.bool)
    expected_box[0:5, 3:9] = True
    assert torch.equal(box, expected_box)
    assert exact.item() == pytest.approx(1 - 5 * 6 / 100)

    mixed = blend(images, (~box).double())
    expected = images.clone()
    expected[:, :, 0:5, 3:9] = images.roll(1, 0)[:, :, 0:5, 3:9]
    assert torch.equal(mixed, expected)  # exact: pixels are copied, not blended
    targets = mix_targets(labels, exact, num_classes=4)
    assert targets[2].tolist() == pytest.approx([0, 0.3, 0.7, 0])


def test_soft_target_loss_without_mixing_is_cross_entropy_with_label_smoothing(tiny_cache):
    parts, _ = build(tiny_cache / "cache", "cpu", label_smoothing=0.1, mixup_alpha=0.2)
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 1, 1])
    one_hot = mix_targets(labels, torch.tensor(1.0), num_classes=4)  # lambda 1: no mixing
    torch.testing.assert_close(
        parts.criterion(logits, one_hot), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )
    # Mixed: the cross-entropy against the mix of the two smoothed one-hots.
    lam = torch.tensor(0.25)
    smoothed = F.one_hot(labels, 4).float() * 0.9 + 0.1 / 4
    soft = lam * smoothed + (1 - lam) * smoothed.roll(1, 0)
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(parts.criterion(logits, mix_targets(labels, lam, 4)), expected)


def test_draws_come_from_the_generator_and_follow_beta():
    draw = [beta(0.4, torch.Generator().manual_seed(3), torch.device("cpu")) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    g = torch.Generator().manual_seed(0)
    lams = torch.stack([beta(0.4, g, torch.device("cpu")) for _ in range(4000)])
    assert lams.min() >= 0 and lams.max() <= 1
    assert lams.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lams.var().item() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.1)


@pytest.mark.parametrize(
    "alphas", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)], ids=["mixup", "cutmix", "both"]
)
def test_a_mixed_batch_is_a_neighbour_mix_with_matching_targets(alphas):
    images, labels = batch(size=16)
    seen = set()
    for seed in range(8):
        mix = Mixing(*alphas, num_classes=4, generator=torch.Generator().manual_seed(seed))
        mixed, targets = mix(images, labels)
        again = Mixing(*alphas, num_classes=4, generator=torch.Generator().manual_seed(seed))
        again_mixed, again_targets = again(images, labels)
        assert torch.equal(mixed, again_mixed) and torch.equal(targets, again_targets)
        lam = targets[0, 0].item()  # image 0 (label 0) keeps lam of itself
        own = (mixed[0] - images[0]).abs().amax(0) < 1e-6
        if torch.equal(mixed[0][:, ~own], images[3][:, ~own]):  # pixels pasted: CutMix
            seen.add("cutmix")
            assert lam == pytest.approx(own.double().mean().item())
        else:
            seen.add("mixup")
            torch.testing.assert_close(mixed[0], lam * images[0] + (1 - lam) * images[3])
    expected = {"mixup": alphas[0] > 0, "cutmix": alphas[1] > 0}
    assert seen == {name for name, on in expected.items() if on}


def test_negative_alpha_is_named():
    with pytest.raises(CvpipeError, match="cutmix_alpha must be 0"):
        Mixing(0.2, -1.0, num_classes=4, generator=torch.Generator())


def test_training_with_mixup_and_cutmix_is_reproducible_from_the_seed(tiny_cache, tmp_path):
    settings = {
        "model": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8,
        "warmup_epochs": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
    }  # fmt: skip
    cfg = TrainConfig.from_dict(settings)
    for name in ("a", "b"):
        out = tmp_path / name
        train(cfg, tiny_cache / "cache", out / "model.pt", out / "history.csv", threads=2)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    row = a["val_metrics"]
    assert math.isfinite(row["train_loss"]) and 0 <= row["train_acc"] <= 1
    assert a["config"]["mixup_alpha"] == 0.4 and a["config"]["cutmix_alpha"] == 1.0
