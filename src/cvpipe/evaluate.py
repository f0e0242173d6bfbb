"""Evaluate stage: run the trained model on the test split and write its metrics.

Outputs:

- `metrics.json`: accuracy, per-class precision/recall/F1/ROC-AUC, macro averages, the confusion
  matrix, which model epoch was evaluated, and `calibration` (`cvpipe.calibration`: ECE, MCE
  and NLL before and after temperature scaling, the temperature and the reliability bins).
  Deterministic: no timings in it, so two runs with the same seed compare byte for byte;
- `predictions.csv`: path (relative to the data root), true class, predicted class and every
  class probability, in test-split order;
- `timing.json`: inference images/s (wall clock, hence its own file), after an untimed warm-up
  batch and over at least `MIN_TIMED_IMAGES` images (several passes over a small split).

The probabilities are temperature-scaled, softmax(logits / T) with the `temperature` training
stored in model.pt (what `cvpipe predict` returns too), and the whole report is of them:
predictions.csv, `log_loss` and the one-vs-rest ROC-AUC (which scaling can change: the order
of one class's probability over images is not fixed by T). Accuracy, F1 and the confusion
matrix are the same either way; the unscaled NLL and calibration errors are in `calibration`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cvpipe import atomic, calibration, checkpoint, runtime
from cvpipe.augment import eval_transform
from cvpipe.data import CacheSplit, build_loader
from cvpipe.distributed import pick_device
from cvpipe.errors import CvpipeError
from cvpipe.index import read_manifest, split_rows
from cvpipe.metrics import classification_report
from cvpipe.models import build_model


def load_model(model_path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network stored by the train stage; returns (model in eval mode, model file).
    A model file without `cache_size` (an older cvpipe's) was trained from an image_size cache."""
    rerun = "rerun training with `snakemake --forcerun train` (or delete it)"
    try:
        saved = checkpoint.load(model_path, map_location="cpu", fix=rerun)
    except FileNotFoundError:
        raise CvpipeError(f"{model_path} is missing: run the train stage first.") from None
    if not isinstance(saved, dict) or not {"model_name", "classes", "model"} <= saved.keys():
        raise CvpipeError(f"{model_path} is not a model file written by cvpipe train; {rerun}.")
    saved.setdefault("cache_size", saved.get("image_size"))
    model = build_model(saved["model_name"], len(saved["classes"]))
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), saved


# Fewest images the throughput is measured on: a small test split is timed over several passes.
MIN_TIMED_IMAGES = 512


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: the clock must see finished work
        torch.cuda.synchronize(device)


def logits_function(
    model: torch.nn.Module, saved: dict, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 N x S x S x 3 batch -> float32 logits on the CPU, as the model was trained: the
    centre image_size crop of the batch, its mean and std, channels-last and autocast settings
    (`saved` is the model file)."""
    mean = torch.tensor(saved["mean"], device=device)
    std = torch.tensor(saved["std"], device=device)
    channels_last = saved["config"].get("channels_last", False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = runtime.autocast_factory(
        device, runtime.amp_dtype(saved["config"].get("amp", "off"), device)
    )

    @torch.no_grad()
    def logits(images: torch.Tensor) -> torch.Tensor:
        x = eval_transform(
            images.to(device, non_blocking=True), mean, std, channels_last, saved["image_size"]
        )
        with autocast():
            return model(x).float().cpu()

    return logits


@torch.no_grad()
def predict(
    model: torch.nn.Module, saved: dict, split: CacheSplit, device: torch.device, batch_size: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Logits (float32) and labels for every image of `split`, the images/s achieved and the
    number of images that were timed.

    The first batch is not timed (CUDA context, cuDNN autotuning, allocator warm-up); the rest
    of the pass is, and repeat passes (results unused) until `MIN_TIMED_IMAGES` were timed.
    """
    infer = logits_function(model, saved, device)
    loader = build_loader(split, batch_size, train=False, pin_memory=device.type == "cuda")

    logits, labels = [], []
    timed_images, seconds = 0, 0.0
    for i, (images, y) in enumerate(loader):
        if i == 1:  # after the untimed warm-up batch
            _sync(device)
            started = time.perf_counter()
        logits.append(infer(images))
        labels.append(y)
        timed_images += len(y) if i else 0
    if timed_images:
        _sync(device)
        seconds = time.perf_counter() - started
    while len(split) > 0 and timed_images < MIN_TIMED_IMAGES:
        _sync(device)
        started = time.perf_counter()
        for images, _ in loader:
            infer(images)
            timed_images += len(images)
        _sync(device)
        seconds += time.perf_counter() - started
    images_per_s = timed_images / max(seconds, 1e-9)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), images_per_s, timed_images


def job_record(started_unix: float) -> dict:
    """Which GPU ids the job was given (`cvpipe gpus`) and when it ran, for timing.json: what
    shows that concurrent evaluations never shared a GPU, as provenance.json does for training."""
    return {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started_unix": started_unix,
        "finished_unix": time.time(),
    }


def stored_temperature(saved: dict, model_path: str | Path) -> float:
    """The temperature training fitted (`cvpipe.calibration`), checked to be a usable one."""
    temperature = saved.get("temperature")
    if not isinstance(temperature, float) or not 0 < temperature < math.inf:
        raise CvpipeError(
            f"{model_path} holds no usable temperature ({temperature!r}): it was written by an "
            "older cvpipe or changed since; rerun training with `snakemake --forcerun train`."
        )
    return temperature


def _test_split(cache_dir: str | Path, manifest_path: str | Path) -> tuple[CacheSplit, list]:
    """The cached test split and its manifest rows, checked to list the same images."""
    test = CacheSplit(cache_dir, "test")
    rows = split_rows(read_manifest(manifest_path), "test")
    if len(rows) != len(test):
        raise CvpipeError(f"{manifest_path} lists {len(rows)} test images, the cache {len(test)}")
    if [r["label"] for r in rows] != test.labels.tolist():
        raise CvpipeError(
            f"the test cache in {cache_dir} does not match {manifest_path}; rerun preprocess"
        )
    return test, rows


def _write_predictions(path: str | Path, rows: list, probs: np.ndarray, classes: list[str]) -> None:
    """predictions.csv: path, true class, predicted class and every class probability."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in classes)])
    for row, p in zip(rows, probs, strict=True):
        writer.writerow(
            [row["path"], row["class"], classes[int(p.argmax())], *(f"{v:.6f}" for v in p)]
        )
    atomic.write_text(path, buf.getvalue())


def evaluate(
    model_path: str | Path,
    cache_dir: str | Path,
    manifest_path: str | Path,
    metrics_path: str | Path,
    predictions_path: str | Path,
    timing_path: str | Path,
    batch_size: int = 256,
    device: str = "auto",
    threads: int | None = None,
) -> dict:
    """Evaluate the model on the test split and write the three outputs; returns the metrics."""
    started_unix = time.time()
    runtime.set_threads(threads)
    dev = pick_device(device)
    model, saved = load_model(model_path, dev)
    test, rows = _test_split(cache_dir, manifest_path)
    if test.image_size != saved["cache_size"]:
        raise CvpipeError(
            f"{model_path} was trained from a {saved['cache_size']} px cache, but {cache_dir} "
            f"holds {test.image_size} px images: evaluate it with its own cache"
        )
    temperature = stored_temperature(saved, model_path)
    logits, labels, images_per_s, timed = predict(model, saved, test, dev, batch_size)
    probs = calibration.softmax(logits, temperature)
    classes = saved["classes"]
    report = classification_report(labels, probs, classes)
    scaling = calibration.calibration_report(logits, labels, temperature)
    scaling["fit"] = saved.get("calibration_fit")
    metrics = {"model": saved["model_name"], "epoch": saved["epoch"], **report}
    metrics["calibration"] = scaling
    atomic.write_json(metrics_path, metrics)
    _write_predictions(predictions_path, rows, probs, classes)
    atomic.write_json(
        timing_path,
        {
            "inference_images_per_s": round(images_per_s, 1),
            "num_images": len(test),
            "timed_images": timed,
            "batch_size": batch_size,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            **job_record(started_unix),
        },
    )
    return metrics
