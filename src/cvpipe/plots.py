"""Plots stage: the figures of one experiment (matplotlib, written atomically).

- `curves.png`: loss, accuracy and learning rate per epoch (train and validation);
- `confusion.png`: the test confusion matrix, counts and row-normalised recall;
- `samples.png`: a grid of test images, wrong predictions first, each titled with the true and
  predicted class and the predicted probability. The images are decoded from the originals
  with the experiment's resize rule (a couple of dozen images), so figures never need the
  preprocessed cache, which DVC does not version;
- `per_class.png`: precision, recall and F1 per class;
- `reliability.png`: the reliability diagram from metrics.json's `calibration` section (test
  accuracy against mean confidence per confidence bin, before and after temperature scaling,
  ECE in the legend) above the number of images in each bin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cvpipe.figures import class_labels, plt, read_csv, save_figure
from cvpipe.index import read_manifest
from cvpipe.preprocess import load_resized


def plot_curves(history: list[dict[str, str]], title: str) -> plt.Figure:
    epochs = [int(r["epoch"]) for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [float(r[f"{split}_{key}"]) for r in history], style, ms=3, label=split)
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(epochs, [float(r["lr"]) for r in history], "-o", ms=3, color="tab:green")
    axes[2].set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate")
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(metrics: dict, title: str) -> plt.Figure:
    cm = np.array(metrics["confusion_matrix"])
    classes = metrics["classes"]
    recall = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 2.2 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if recall[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{recall[i, j]:.0%}",
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    labels = class_labels(classes)
    ax.set_xticks(range(len(classes)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: test confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    return fig


def pick_samples(predictions: list[dict[str, str]], count: int) -> list[int]:
    """Row indices to show: wrong predictions first (most confident first), then right ones."""

    def confidence(i: int) -> float:
        return float(predictions[i][f"p_{predictions[i]['predicted']}"])

    wrong = [i for i, r in enumerate(predictions) if r["true"] != r["predicted"]]
    right = [i for i, r in enumerate(predictions) if r["true"] == r["predicted"]]
    wrong.sort(key=confidence, reverse=True)
    # Up to half wrong ones; whichever kind runs short, the other fills the grid.
    n_right = min(len(right), count - min(len(wrong), count // 2))
    n_wrong = min(len(wrong), count - n_right)
    # Spread the right ones over the split (manifest order is by class) so every class shows.
    step = max(1, len(right) // max(1, n_right))
    return wrong[:n_wrong] + right[::step][:n_right]


def plot_samples(
    predictions: list[dict[str, str]], load_image, count: int, title: str
) -> plt.Figure:
    """`load_image(path)` gives the image as the model saw it (HxWx3 uint8)."""
    chosen = pick_samples(predictions, count)
    cols = min(8, max(1, len(chosen)))
    rows = max(1, -(-len(chosen) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.25 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    classes = [k.removeprefix("p_") for k in predictions[0] if k.startswith("p_")]
    label = dict(zip(classes, class_labels(classes), strict=True))
    for ax, i in zip(axes.flat, chosen, strict=False):
        r = predictions[i]
        ok = r["true"] == r["predicted"]
        ax.imshow(load_image(r["path"]))
        ax.set_title(
            f"true {label[r['true']]}\n"
            f"pred {label[r['predicted']]} {float(r['p_' + r['predicted']]):.2f}",
            fontsize=7,
            color="tab:green" if ok else "tab:red",
        )
    fig.suptitle(f"{title}: test samples (red = wrong)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_per_class(metrics: dict, title: str) -> plt.Figure:
    classes = metrics["classes"]
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(classes), 3.6))
    for k, key in enumerate(("precision", "recall", "f1")):
        values = [metrics["per_class"][c][key] for c in classes]
        bars = ax.bar(x + (k - 1) * 0.27, values, 0.27, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(x, class_labels(classes))
    ax.set(ylim=(0, 1.1), ylabel="score", title=f"{title}: per-class test scores")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_reliability(metrics: dict, title: str) -> plt.Figure:
    """Reliability diagram before and after temperature scaling, with the bin counts below."""
    cal = metrics["calibration"]
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5.2, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}
    )
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    width = 1 / cal["n_bins"] / 2.4
    runs = (("", "before", 1.0, "tab:red"), ("_scaled", "after", cal["temperature"], "tab:blue"))
    for k, (suffix, when, temperature, colour) in enumerate(runs):
        bins = cal[f"reliability{suffix}"]
        full = [b for b in bins if b["count"]]
        label = f"{when}: T = {temperature:.2f}, ECE {cal[f'ece{suffix}']:.3f}"
        ax.plot(
            [b["confidence"] for b in full], [b["accuracy"] for b in full], "-o",
            ms=4, color=colour, label=label,
        )  # fmt: skip
        centres = [(b["lower"] + b["upper"]) / 2 + (k - 0.5) * width for b in bins]
        bars = counts.bar(centres, [b["count"] for b in bins], width, color=colour, alpha=0.7)
        counts.bar_label(bars, labels=[str(b["count"] or "") for b in bins], fontsize=6)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.04), ylabel="test accuracy in the bin")
    ax.set_title(f"{title}: reliability (before / after temperature scaling)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    counts.set(xlabel="confidence (predicted class probability)", ylabel="images")
    counts.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def make_plots(
    history_path: str | Path,
    metrics_path: str | Path,
    predictions_path: str | Path,
    manifest_path: str | Path,
    data_root: str | Path,
    out: Mapping[str, str | Path],
    title: str,
    image_size: int,
    resize: str = "crop",
    dpi: int = 120,
    samples: int = 24,
) -> None:
    """Write the five figures; `out` maps curves/confusion/samples/per_class/reliability to
    paths."""
    history = read_csv(history_path)
    metrics = json.loads(Path(metrics_path).read_text())
    predictions = read_csv(predictions_path)
    save_figure(plot_curves(history, title), out["curves"], dpi)
    save_figure(plot_confusion(metrics, title), out["confusion"], dpi)
    sha256 = {r["path"]: r["sha256"] for r in read_manifest(manifest_path)}

    def load_image(path: str) -> np.ndarray:
        return load_resized(Path(data_root) / path, sha256[path], image_size, resize)

    save_figure(plot_samples(predictions, load_image, samples, title), out["samples"], dpi)
    save_figure(plot_per_class(metrics, title), out["per_class"], dpi)
    save_figure(plot_reliability(metrics, title), out["reliability"], dpi)
