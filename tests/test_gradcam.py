"""Grad-CAM: the layer it reads in each model family, that its heat map points at the defect of
a model trained here, and the workflow's figure in the results and the report."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest
import torch
from helpers import BIN, EXPERIMENTS, snakemake, tool_env

from cvpipe.augment import normalize, to_float
from cvpipe.gradcam import grad_cam, pick_rows, target_layer
from cvpipe.models import build_model
from cvpipe.synth import draw_image

# The blob test's images: at 96 px Grad-CAM reads resnet18's layer3 (6 x 6 positions; layer4
# would keep 3 x 3). Smaller images leave coarser maps that, after seconds of training, barely
# localised (the peak missed the quadrant for some seeds).
SIZE = 96
RADIUS = 6  # of the test image's blob; the training blobs have radius 5..8
EPOCHS = 8


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", "layer4"),
        ("efficientnet_b0", "features"),
        ("mobilenet_v3_small", "features"),
        ("convnext_tiny", "features"),
    ],
)
def test_target_layer_is_the_last_feature_stage_and_the_model_is_left_as_it_was(name, expected):
    torch.manual_seed(0)
    model = build_model(name, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_name, layer = target_layer(model, 128)
    assert layer_name == expected and layer is model.get_submodule(expected)
    cams = grad_cam(model, torch.randn(2, 3, 128, 128), [0, 2], layer)
    assert cams.shape == (2, 128, 128) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())
    assert model.training  # built in training mode, and left so


def test_target_layer_falls_back_to_an_earlier_stage_on_small_images():
    model = build_model("resnet18", 2)
    assert target_layer(model, 64)[0] == "layer3"  # layer4 would be 2 x 2 there
    assert target_layer(model, 32)[0] == "layer2"  # layer3 would be 2 x 2 there


def with_blob(image: np.ndarray, x: float, y: float, radius: int) -> np.ndarray:
    """`image` with a bright disc: the defect of the `blob` class."""
    out = image.copy()
    cv2.circle(out, (int(x), int(y)), radius, (255, 255, 255), -1, cv2.LINE_AA)
    return out


def blob_data(per_class: int) -> tuple[np.ndarray, torch.Tensor]:
    """Two classes of synthetic surfaces: clean (`ok`, 0) and with a bright blob (1) anywhere."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(per_class):
        images.append(draw_image(0, 0, i, SIZE))
        radius = int(rng.integers(RADIUS - 1, RADIUS + 3))
        x, y = rng.uniform(radius, SIZE - radius, size=2)
        images.append(with_blob(draw_image(0, 0, 1000 + i, SIZE), x, y, radius))
        labels += [0, 1]
    return np.stack(images), torch.tensor(labels)


def train_blob_detector(images: np.ndarray, labels: torch.Tensor, epochs: int) -> tuple:
    """resnet18 trained from scratch (a plain loop) to tell blob from clean; returns the model
    and the normalisation of its inputs."""
    x = to_float(torch.from_numpy(images), channels_last=False)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    x = normalize(x, mean, std)
    torch.manual_seed(0)
    model = build_model("resnet18", 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(16):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), mean, std


@pytest.mark.slow
def test_heat_map_peaks_in_the_quadrant_of_the_defect():
    model, mean, std = train_blob_detector(*blob_data(per_class=24), epochs=EPOCHS)
    _, layer = target_layer(model, SIZE)
    corner = RADIUS + 2
    centres = {
        "top left": (corner, corner),
        "top right": (SIZE - corner, corner),
        "bottom left": (corner, SIZE - corner),
        "bottom right": (SIZE - corner, SIZE - corner),
    }
    images = np.stack(
        [
            with_blob(draw_image(1, 0, 5000 + k, SIZE), x, y, RADIUS)
            for k, (x, y) in enumerate(centres.values())
        ]
    )
    x = normalize(to_float(torch.from_numpy(images), channels_last=False), mean, std)
    assert model(x).argmax(dim=1).tolist() == [1, 1, 1, 1]  # it sees the defect ...
    cams = grad_cam(model, x, [1, 1, 1, 1], layer)
    half = SIZE // 2
    for (where, (cx, cy)), cam in zip(centres.items(), cams, strict=True):
        row, col = np.unravel_index(cam.argmax(), cam.shape)
        # ... and the heat map says where: its peak, and more than an even share of its mass
        assert (row < half, col < half) == (cy < half, cx < half), where
        rows = slice(0, half) if cy < half else slice(half, SIZE)
        cols = slice(0, half) if cx < half else slice(half, SIZE)
        assert cam[rows, cols].sum() > 0.3 * cam.sum(), where


def test_figure_shows_wrong_and_right_predictions_most_confident_first():
    def row(true: str, predicted: str, p: float) -> dict[str, str]:
        probability = {f"p_{c}": str(p if c == predicted else 1 - p) for c in "ab"}
        return {
            "path": f"{true}{predicted}{p}",
            "true": true,
            "predicted": predicted,
            **probability,
        }

    predictions = [
        row("a", "a", 0.9), row("a", "a", 0.95), row("b", "b", 0.8),
        row("a", "b", 0.7), row("b", "a", 0.99), row("b", "b", 0.6),
    ]  # fmt: skip
    paths = [[r["path"] for r in pick_rows(predictions, n)] for n in (4, 6, 1)]
    # half wrong, half right, each kind most confident first, classes taken in turn
    assert paths[0] == ["ba0.99", "ab0.7", "aa0.95", "bb0.8"]
    assert paths[1] == ["ba0.99", "ab0.7", "aa0.95", "bb0.8", "aa0.9", "bb0.6"]
    assert paths[2] == ["aa0.95"]
    only_right = [r for r in predictions if r["true"] == r["predicted"]]
    assert len(pick_rows(only_right, 3)) == 3  # no wrong ones: right ones fill the figure


@pytest.mark.slow
def test_workflow_writes_the_figure_and_the_report_shows_it(tiny_run_copy):
    for experiment in EXPERIMENTS:
        figure = tiny_run_copy / "results" / experiment / "plots" / "gradcam.png"
        assert figure.read_bytes()[:4] == b"\x89PNG"
        log = tiny_run_copy / "results" / "logs" / "gradcam" / f"{experiment}.log"
        assert "Grad-CAM of layer" in log.read_text()
    metadata = "results/comparison/report-metadata.json"
    snakemake(tiny_run_copy, "--report", "results/report.html", "--report-metadata", metadata)
    html = (tiny_run_copy / "results" / "report.html").read_text()
    assert "gradcam.png" in html and "Grad-CAM" in html


@pytest.mark.slow
def test_predictions_of_other_classes_are_refused_by_name(tiny_run, tmp_path):
    results = tiny_run / "results" / "resnet18"
    predictions = (results / "eval" / "predictions.csv").read_text()
    stale = tmp_path / "predictions.csv"  # as if written for other classes
    stale.write_text(predictions.replace("p_ok", "p_fine", 1))
    args = {
        "--model": results / "train" / "model.pt",
        "--predictions": stale,
        "--manifest": tiny_run / "results" / "dataset" / "manifest.csv",
        "--data-root": tiny_run / "data" / "surface-defects",
        "--out": tmp_path / "gradcam.png",
        "--title": "resnet18",
        "--num-samples": 2,
        "--dpi": 50,
        "--threads": 1,
        "--device": "cpu",
    }
    command = [str(BIN / "cvpipe"), "gradcam", *(str(x) for kv in args.items() for x in kv)]
    proc = subprocess.run(command, capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 1 and not (tmp_path / "gradcam.png").exists()
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("cvpipe gradcam: error: ") and str(stale) in error
    assert "'fine'" in error and "rerun the evaluate stage" in error
