"""Grad-CAM figure: where in the image the trained model found the evidence for its prediction.

Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391): at a convolutional layer
with activations A_k (one map per channel k), the weight of channel k is the spatial mean of the
gradient of the class score with respect to A_k; the map is relu(sum_k w_k A_k), upsampled to
the input size and scaled to 0..1. The map shown is the predicted class's.

The target layer is found, not configured: the last module (in the order forward calls finish)
whose output is 4-D with at least `MIN_POSITIONS` x `MIN_POSITIONS` positions at the model's
input size, taken at the shallowest depth that has one (`target_layer`). From 128 px up that is
the last feature stage of every torchvision family (resnet `layer4`, `features` of efficientnet,
mobilenet and convnext); on smaller inputs, an earlier stage or block. A 2 x 2 map can only name
a quadrant, and each of its cells sees the whole image: on the built-in 64 px images resnet18's
`layer4` lit up the same corner whatever the defect, `layer3` (4 x 4) sat on the defects.

Implemented here with a forward hook and `torch.autograd.grad` instead of the pytorch-grad-cam
package (`grad-cam` on PyPI): its releases up to 1.5.4 require `opencv-python`, which installs
a second `cv2` over our `opencv-python-headless` (1.5.7 requires the headless one); the
releases checked (1.4.8, 1.5.4, 1.5.7) ship only as an sdist and pull ttach, tqdm, scikit-learn
and scipy; and its target layer is named by hand per architecture, which is the part needed here.

The figure shows test images as the model saw them (decoded from the originals, resized by
the model file's rule to its cache size and centre-cropped, as evaluation sees them), each
beside its heat map laid over it: up to half wrong predictions, then correct ones
(`pick_rows`). The choice is its own, not plots.py's, so a change to the other figures never
reruns this one.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvpipe import runtime
from cvpipe.augment import center_crop, eval_transform
from cvpipe.distributed import pick_device
from cvpipe.errors import CvpipeError
from cvpipe.evaluate import load_model
from cvpipe.figures import class_labels, plt, read_csv, save_figure
from cvpipe.index import read_manifest
from cvpipe.preprocess import load_resized

log = logging.getLogger(__name__)

# How strongly the heat map covers the image in the overlay, and its colours.
ALPHA = 0.45
# Fewest positions per side of the map Grad-CAM reads (see the module docstring).
MIN_POSITIONS = 4
COLORMAP = "jet"


def _last_outputs(model: nn.Module, image_size: int) -> dict[nn.Module, tuple[int, ...]]:
    """Output shape of each submodule's last call on one image, in the order the calls finish."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            shapes.pop(module, None)  # a module called again moves to its last call's place
            shapes[module] = tuple(output.shape)

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def target_layer(model: nn.Module, image_size: int) -> tuple[str, nn.Module]:
    """Name and module of the layer Grad-CAM reads: among the model's children, the last one
    (in forward order) whose output is 4-D with at least `MIN_POSITIONS` positions a side at
    `image_size`. If
    none is, the search goes down into the last child with a 4-D output (whose map shrank too
    far), so it ends at a stage or block, never at a layer inside one."""
    shapes = _last_outputs(model, image_size)
    order = {module: i for i, module in enumerate(shapes)}
    prefix, parent = "", model
    while True:
        children = sorted(
            ((n, m) for n, m in parent.named_children() if m in shapes), key=lambda c: order[c[1]]
        )
        maps = [(n, m) for n, m in children if len(shapes[m]) == 4]
        found = [(n, m) for n, m in maps if min(shapes[m][2:]) >= MIN_POSITIONS]
        if found:
            return prefix + found[-1][0], found[-1][1]
        inner = [(n, m) for n, m in maps if any(True for _ in m.children())]
        if not inner:
            raise CvpipeError(
                f"{type(model).__name__} keeps no {MIN_POSITIONS} x {MIN_POSITIONS} feature map "
                f"at {image_size} px, so "
                "Grad-CAM has nothing to localise: train at a larger image_size."
            )
        prefix, parent = prefix + inner[-1][0] + ".", inner[-1][1]


def grad_cam(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int], layer: nn.Module
) -> np.ndarray:
    """Grad-CAM maps (N x H x W, 0..1) of the normalised batch `x` (N x 3 x H x W) for the
    class indices `targets`, read at `layer`. The model's weights, gradients and mode are left as
    they were, and no hook stays behind."""
    kept: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        kept["activations"] = output

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    try:
        # Gradients flow from the input too, so frozen weights still yield activations with a
        # graph; eval mode: batch norm uses its running statistics and updates none of them.
        with torch.enable_grad():
            logits = model.eval()(x.detach().requires_grad_(True)).float()
            index = torch.as_tensor(list(targets), device=logits.device)
            scores = logits.gather(1, index[:, None]).sum()  # images are independent in eval
            activations = kept["activations"]
            (gradients,) = torch.autograd.grad(scores, activations)
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    peak = cam.amax(dim=(2, 3), keepdim=True)
    # An all-zero map (no positive evidence anywhere) stays zero instead of dividing by zero.
    cam = torch.where(peak > 0, cam / peak.where(peak > 0, torch.ones_like(peak)), cam)
    return cam[:, 0].cpu().numpy()


def _check_predictions(
    predictions: list[dict[str, str]], classes: list[str], path: str | Path
) -> None:
    if not predictions:
        raise CvpipeError(f"{path} lists no test predictions: the test split is empty.")
    columns = [k.removeprefix("p_") for k in predictions[0] if k.startswith("p_")]
    if columns != list(classes):
        raise CvpipeError(
            f"{path} has the classes {columns}, the model file {list(classes)}: they come from "
            "different runs; rerun the evaluate stage."
        )


def pick_rows(predictions: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """Up to `count` predictions: half wrong and half right where there are enough (whichever
    kind runs short, the other fills), wrong first. Within each kind the most confident come
    first, taking the true classes in turn so that every class shows."""

    def confidence(row: dict[str, str]) -> float:
        return float(row["p_" + row["predicted"]])

    def by_confidence(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        per_class: dict[str, list[dict[str, str]]] = {}
        for row in sorted(rows, key=confidence, reverse=True):  # stable: ties keep file order
            per_class.setdefault(row["true"], []).append(row)
        turns = itertools.zip_longest(*per_class.values())
        return [row for turn in turns for row in turn if row is not None]

    wrong = by_confidence([r for r in predictions if r["true"] != r["predicted"]])
    right = by_confidence([r for r in predictions if r["true"] == r["predicted"]])
    n_wrong = min(len(wrong), max(count // 2, count - len(right)))
    return wrong[:n_wrong] + right[: count - n_wrong]


def plot_gradcam(
    rows: list[dict[str, str]], images: np.ndarray, cams: np.ndarray, title: str
) -> plt.Figure:
    """Grid of (original | overlay) pairs, two pairs per row of the figure."""
    pairs_per_row = min(2, len(rows))
    n_rows = -(-len(rows) // pairs_per_row)
    fig, axes = plt.subplots(
        n_rows, 2 * pairs_per_row, figsize=(3.4 * pairs_per_row, 1.9 * n_rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    classes = [k.removeprefix("p_") for k in rows[0] if k.startswith("p_")]
    label = dict(zip(classes, class_labels(classes), strict=True))
    for i, (r, image, cam) in enumerate(zip(rows, images, cams, strict=True)):
        original, overlay = axes.flat[2 * i], axes.flat[2 * i + 1]
        original.imshow(image)
        overlay.imshow(image)
        overlay.imshow(cam, cmap=COLORMAP, alpha=ALPHA, vmin=0, vmax=1)
        ok = r["true"] == r["predicted"]
        original.set_title(f"true {label[r['true']]}", fontsize=7)
        overlay.set_title(
            f"pred {label[r['predicted']]} {float(r['p_' + r['predicted']]):.2f}",
            fontsize=7,
            color="tab:green" if ok else "tab:red",
        )
    fig.suptitle(f"{title}: Grad-CAM of the predicted class (red = wrong)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the suptitle
    return fig


def make_gradcam(
    model_path: str | Path,
    predictions_path: str | Path,
    manifest_path: str | Path,
    data_root: str | Path,
    out: str | Path,
    title: str,
    samples: int,
    dpi: int,
    device: str = "cpu",
    threads: int | None = None,
) -> None:
    """Write the Grad-CAM figure of up to `samples` test predictions (wrong ones first)."""
    runtime.set_threads(threads)
    dev = pick_device(device)
    model, saved = load_model(model_path, dev)
    if "resize" not in saved:
        raise CvpipeError(
            f"{model_path} does not say how its images were resized (written by an older "
            "cvpipe); rerun training with `snakemake --forcerun train`."
        )
    predictions = read_csv(predictions_path)
    _check_predictions(predictions, saved["classes"], predictions_path)
    rows = pick_rows(predictions, samples)
    sha256 = {r["path"]: r["sha256"] for r in read_manifest(manifest_path)}
    missing = [r["path"] for r in rows if r["path"] not in sha256]
    if missing:
        raise CvpipeError(
            f"{predictions_path} lists {missing[0]}, which {manifest_path} does not: "
            "rerun the evaluate stage."
        )
    size, cache_size, resize = saved["image_size"], saved["cache_size"], saved["resize"]
    images = center_crop(
        np.stack(
            [
                load_resized(Path(data_root) / r["path"], sha256[r["path"]], cache_size, resize)
                for r in rows
            ]
        ),
        size,
    )
    mean = torch.tensor(saved["mean"], device=dev)
    std = torch.tensor(saved["std"], device=dev)
    x = eval_transform(torch.from_numpy(images).to(dev), mean, std)
    layer_name, layer = target_layer(model, size)
    log.info("Grad-CAM of layer %s for %d test images at %d px", layer_name, len(rows), size)
    targets = [saved["classes"].index(r["predicted"]) for r in rows]
    cams = grad_cam(model, x, targets, layer)
    save_figure(plot_gradcam(rows, images, cams, title), out, dpi)
