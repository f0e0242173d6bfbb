"""Predict: class probabilities for new images, from a trained cvpipe model, its ONNX export or a
torchvision model with ImageNet (or local) weights.

Models (`--model`):

- a cvpipe `model.pt`: the images are prepared exactly as for training and evaluation (decode to
  RGB and resize to the model's cache size by its resize mode with `preprocess.decode_resized`,
  the cache's own decoder, reduced JPEG decoding included; the centre image_size crop;
  `augment.eval_transform` with its mean and std, its channels-last and autocast settings), so
  the test split's originals get the probabilities that evaluate's predictions.csv holds;
  probabilities are `softmax(logits / temperature)` (`calibration.softmax`, as evaluate), the
  temperature that training fitted and stored with the model;
- a `.onnx` file with its `model.json` beside it (`cvpipe.onnxmodel`, the `export` extra): the
  same preparation, normalised in NumPy;
- a torchvision model name with `weights`: a weights name (`DEFAULT`, `IMAGENET1K_V1`, ...)
  uses torchvision's preprocessing for those weights (`weights.transforms()`) and class names
  (`weights.meta["categories"]`); the file comes from torch hub's cache (`cvpipe.models`). A
  local state-dict file gets the model's DEFAULT weights' preprocessing and class indices as names.

Inputs are image files, folders (searched recursively, sorted, hidden files and folders left out)
and `@list.txt` files (one path a line, relative to the list's folder; blank and `#` lines
ignored). A file is bad by the index's rules (empty, cut short, not an image, corrupt JPEG data,
unreadable); with `on_bad_file="fail"` every bad file is named and nothing is written, with
`"skip"` the rest are predicted and the bad ones listed.

The CSV has `path`, `predicted`, `top_k` (`class:probability` pairs by descending probability,
`;`-separated) and one `p_<class>` column per class, probabilities with 6 decimals.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from tqdm import tqdm

from cvpipe import atomic, calibration, datatree, index, models, runtime
from cvpipe.augment import center_crop
from cvpipe.decode import decode_rgb8
from cvpipe.distributed import pick_device
from cvpipe.errors import CvpipeError
from cvpipe.evaluate import load_model, logits_function, stored_temperature
from cvpipe.preprocess import decode_resized

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Predictor:
    """A loaded model, whatever its kind: its class names, how one image file's bytes become one
    model input (run in a thread pool) and how a stack of inputs becomes probabilities."""

    classes: list[str]
    prepare: Callable[[bytes], np.ndarray]
    probabilities: Callable[[np.ndarray], np.ndarray]


def _prepare(size: int, cache_size: int, mode: str) -> Callable[[bytes], np.ndarray]:
    """One image file as training's cache holds it (`preprocess.decode_resized` to `cache_size`:
    the same decoder, reduced JPEG decoding included), then its centre `size` crop, as evaluation
    takes it (`augment.center_crop`)."""
    return lambda data: center_crop(decode_resized(data, cache_size, mode, None)[None], size)[0]


def _cvpipe_predictor(model_path: Path, device: torch.device) -> Predictor:
    """A cvpipe model.pt, with evaluate's preparation and inference (see `evaluate.predict`)."""
    model, saved = load_model(model_path, device)
    if "resize" not in saved:
        raise CvpipeError(
            f"{model_path} does not record its resize mode (written by an older cvpipe); "
            "retrain it with `snakemake --forcerun train`."
        )
    prepare = _prepare(saved["image_size"], saved["cache_size"], saved["resize"])
    temperature = stored_temperature(saved, model_path)
    logits = logits_function(model, saved, device)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return calibration.softmax(logits(torch.from_numpy(batch)).numpy(), temperature)

    return Predictor(list(saved["classes"]), prepare, probabilities)


def _onnx_predictor(model_path: Path) -> Predictor:
    """An ONNX export and its model.json: the same preparation, normalised in NumPy."""
    try:
        from cvpipe.onnxmodel import load_onnx
    except ImportError as exc:  # ModuleNotFoundError included: a cvpipe without its export part
        raise CvpipeError(
            f"cannot run {model_path}: ONNX support is not installed ({exc}); "
            "install it with `pip install 'cvpipe[export]'`."
        ) from None
    run, meta = load_onnx(model_path)  # says itself what to install for onnxruntime
    if "resize" not in meta:
        raise CvpipeError(f"the model.json of {model_path} has no resize mode; rerun cvpipe export")
    # model.json without cache_size: an older export, trained from an image_size cache
    prepare = _prepare(
        meta["image_size"], meta.get("cache_size", meta["image_size"]), meta["resize"]
    )
    temperature = float(meta.get("temperature") or 1.0)
    mean = np.asarray(meta["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(1, 3, 1, 1)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        x = (batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255) - mean) / std
        return calibration.softmax(np.asarray(run(np.ascontiguousarray(x))), temperature)

    return Predictor(list(meta["classes"]), prepare, probabilities)


def _head_size(model_name: str, weights_file: Path) -> int:
    """Number of classes of a state-dict file for `model_name`: its classifier's outputs."""
    state = models.load_local_state_dict(weights_file)
    head_name, _ = models.classifier_head(torchvision.models.get_model(model_name, weights=None))
    head = state.get(f"{head_name}.weight")
    if head is None:
        raise CvpipeError(f"{weights_file} has no {head_name}.weight for {model_name}'s classifier")
    return int(head.shape[0])


def _torchvision_predictor(name: str, weights: str, device: torch.device) -> Predictor:
    """A torchvision model with named weights (their classes and preprocessing) or a file."""
    if models.is_weights_file(weights):
        num_classes = _head_size(name, Path(weights))
        model = models.build_model(name, num_classes, weights)
        classes = [str(i) for i in range(num_classes)]
        transforms = models.resolve_named_weights(name, "DEFAULT").transforms()
    else:
        w = models.resolve_named_weights(name, weights)
        classes = list(w.meta["categories"])
        model = models.build_model(name, len(classes), weights)
        transforms = w.transforms()
    model = model.to(device).eval()

    def prepare(data: bytes) -> np.ndarray:
        return transforms(torch.from_numpy(decode_rgb8(data)).permute(2, 0, 1)).numpy()

    @torch.no_grad()
    def probabilities(batch: np.ndarray) -> np.ndarray:
        logits = model(torch.from_numpy(batch).to(device)).float()
        return torch.softmax(logits, dim=1).cpu().numpy()

    return Predictor(classes, prepare, probabilities)


def load_predictor(model: str, weights: str | None, device: torch.device) -> Predictor:
    """The predictor for `--model`: a `.onnx` file, a cvpipe model file or a torchvision name."""
    path = Path(model)
    if path.suffix == ".onnx" or path.is_file():
        if weights is not None:
            raise CvpipeError(f"--weights is for torchvision model names; {model} holds its own")
        if path.suffix == ".onnx":
            if not path.is_file():
                raise CvpipeError(f"{model} is missing")
            return _onnx_predictor(path)
        return _cvpipe_predictor(path, device)
    from cvpipe.modelnames import classification_models

    if path.suffix in (".pt", ".pth") or "/" in model:
        raise CvpipeError(f"--model {model} is missing (no such file)")
    if model not in classification_models():
        raise CvpipeError(
            f"--model {model!r} is neither a model file (cvpipe model.pt or .onnx) nor a "
            "torchvision classification model name (torchvision.models.list_models())."
        )
    return _torchvision_predictor(model, weights or "DEFAULT", device)


def _listed_files(list_file: Path) -> list[Path]:
    """The paths of an `@list.txt`, relative ones taken from the list's folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        reason = exc.strerror or exc
        raise CvpipeError(f"cannot read the input list @{list_file}: {reason}") from None
    entries = [line.strip() for line in lines]
    return [list_file.parent / e for e in entries if e and not e.startswith("#")]


def input_files(inputs: Sequence[str]) -> list[Path]:
    """The image files named by `inputs` (files, folders, `@list.txt`), in the order given."""
    files: list[Path] = []
    for item in inputs:
        for path in _listed_files(Path(item[1:])) if item.startswith("@") else [Path(item)]:
            files += datatree.folder_files(path) if path.is_dir() else [path]
    return files


def read_checked(path: Path) -> bytes | str:
    """The file's bytes, or why it is bad: the index's verdict (`index.read_facts`)."""
    read = index.read_facts(path)
    return read if isinstance(read, str) else read[0]


def _batches(
    files: list[Path], prepare: Callable[[bytes], np.ndarray], batch_size: int, workers: int
) -> Iterator[list[tuple[Path, np.ndarray | str]]]:
    """Prepared inputs (or reasons) per batch of files; the next batch decodes meanwhile."""

    def load(path: Path) -> np.ndarray | str:
        data = read_checked(path)
        return data if isinstance(data, str) else prepare(data)

    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        ahead: list[Future] = [pool.submit(load, p) for p in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            current = ahead
            ahead = [pool.submit(load, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
            yield list(zip(chunk, (f.result() for f in current), strict=True))


def _csv_text(paths: list[str], probs: np.ndarray, classes: list[str], top_k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "predicted", "top_k", *(f"p_{c}" for c in classes)])
    for path, p in zip(paths, probs, strict=True):
        best = np.argsort(-p, kind="stable")[:top_k]
        ranked = ";".join(f"{classes[i]}:{p[i]:.6f}" for i in best)
        writer.writerow([path, classes[int(p.argmax())], ranked, *(f"{v:.6f}" for v in p)])
    return buf.getvalue()


def _bad_message(bad: list[tuple[str, str]]) -> str:
    listing = "\n".join(f"  {path}: {reason}" for path, reason in bad)
    return (
        f"{len(bad)} input file(s) cannot be read as images; nothing was written:\n{listing}\n"
        "Fix or remove them, or pass --on-bad-file skip to predict the others."
    )


def run_batches(
    predictor: Predictor, files: list[Path], batch_size: int, workers: int, stop_on_bad: bool
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Paths and probabilities of the good files, and (path, reason) of the bad ones. With
    `stop_on_bad`, inference stops at the first bad file (the rest is only checked)."""
    paths: list[str] = []
    probs: list[np.ndarray] = []
    bad: list[tuple[str, str]] = []
    with tqdm(total=len(files), unit="img", disable=None, file=sys.stderr) as bar:
        for batch in _batches(files, predictor.prepare, batch_size, workers):
            bad += [(str(p), r) for p, r in batch if isinstance(r, str)]
            good = [(str(p), x) for p, x in batch if not isinstance(x, str)]
            if good and not (stop_on_bad and bad):
                probs.append(predictor.probabilities(np.stack([x for _, x in good])))
                paths += [p for p, _ in good]
            bar.update(len(batch))
    empty = np.zeros((0, len(predictor.classes)))
    return paths, np.concatenate(probs) if probs else empty, bad


def predict(
    model: str,
    inputs: Sequence[str],
    out: str | Path | None = None,
    weights: str | None = None,
    top_k: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    on_bad_file: str = "fail",
    bad_out: str | Path | None = None,
    threads: int | None = None,
) -> list[tuple[str, str]]:
    """Predict every input image and write the CSV to `out` (stdout when None); returns the
    bad files skipped as (path, reason). See the module docstring."""
    if on_bad_file not in ("fail", "skip"):
        raise CvpipeError(f"--on-bad-file must be fail or skip, not {on_bad_file!r}")
    if batch_size < 1 or (top_k is not None and top_k < 1):
        raise CvpipeError("--batch-size and --top-k must be at least 1")
    files = input_files(inputs)
    if not files:
        raise CvpipeError(f"no image files in {' '.join(inputs)}")
    runtime.set_threads(threads)
    cv2.setNumThreads(1)  # parallel over images in the thread pool, as preprocess does
    predictor = load_predictor(model, weights, pick_device(device))
    workers = max(1, min(threads or os.cpu_count() or 1, 8))
    paths, probs, bad = run_batches(predictor, files, batch_size, workers, on_bad_file == "fail")
    if bad and on_bad_file == "fail":
        raise CvpipeError(_bad_message(bad))
    k = min(top_k or DEFAULT_TOP_K, len(predictor.classes))
    text = _csv_text(paths, probs, predictor.classes, k)
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if bad_out is not None:
        atomic.write_csv(bad_out, index.BAD_FIELDS, [{"path": p, "reason": r} for p, r in bad])
    if out is None:
        sys.stdout.write(text)
    else:
        atomic.write_text(out, text)
    log.info("%d images predicted, %d bad files skipped", len(paths), len(bad))
    return bad
