"""Export stage: the trained model as files that run without cvpipe.

Outputs, in the folder the rule names:

- `model.onnx`: the network as ONNX (opset of the exporter), one input `images` (float32, N x 3 x
  S x S, RGB, normalised as `(x / 255 - mean) / std` per channel) and one output `logits`
  (N x classes), the batch axis dynamic. Weights inside the file (no `model.onnx.data`);
- `model.pt2`: the same network as a `torch.export` program (`torch.export.load(f).module()`),
  batch axis dynamic;
- `model.json`: what a caller needs to prepare images and read the logits: classes, image size,
  cache size (resize to it, then take the centre image size crop), resize mode, mean, std,
  temperature, model name, the input/output description and the sha256 of the model file it
  came from.

No TorchScript: PyTorch deprecates it in favour of `torch.export`, which both files come from.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cvpipe import atomic
from cvpipe.datatree import sha256_file
from cvpipe.evaluate import load_model

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# torch.export specialises a dimension whose example size is 0 or 1, so the example batch is 2.
EXAMPLE_BATCH = 2


def _example_and_shapes(image_size: int) -> tuple[tuple[torch.Tensor], tuple[dict]]:
    """An example input batch and the dynamic shapes that leave its batch axis free."""
    example = torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size)
    return (example,), ({0: torch.export.Dim("batch", min=1)},)


def write_onnx(model: torch.nn.Module, image_size: int, path: str | Path) -> None:
    """`model` (eval mode, CPU, float32) as ONNX at `path`, batch axis dynamic."""
    example, dynamic_shapes = _example_and_shapes(image_size)
    with atomic.atomic_path(path, suffix=".onnx") as tmp:
        # dynamo=True, stated: the default changed from False to True in PyTorch 2.9, and the
        # container runs 2.8. The TorchScript-based exporter (dynamo=False) warns that it is
        # deprecated and will be removed, while dynamo=True works on 2.8 (with onnxscript) and
        # on 2.14 alike, and exports the same torch.export graph as model.pt2.
        # (Checked with onnxscript 0.7.2: 2.8.0 and 2.14.1 write the same input/output names
        # and batch axis, and agree with the PyTorch model; 2.14 also runs onnxscript's graph
        # optimiser, its default.) external_data=False: the weights go inside model.onnx, so
        # the job writes no undeclared model.onnx.data (ONNX's 2 GB limit bounds such a model).
        torch.onnx.export(
            model, example, str(tmp), dynamo=True, external_data=False,
            dynamic_shapes=dynamic_shapes, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        )  # fmt: skip


def write_program(model: torch.nn.Module, image_size: int, path: str | Path) -> None:
    """`model` as a `torch.export` program at `path` (`torch.export.load` reads it back)."""
    example, dynamic_shapes = _example_and_shapes(image_size)
    program = torch.export.export(model, example, dynamic_shapes=dynamic_shapes)
    with atomic.atomic_path(path, suffix=".pt2") as tmp:
        torch.export.save(program, tmp)


def sidecar(saved: dict, model_path: str | Path) -> dict:
    """model.json's content: how to feed the exported model and read what it returns."""
    size, classes = saved["image_size"], list(saved["classes"])
    return {
        "format_version": SIDECAR_VERSION,
        "model_name": saved["model_name"],
        "classes": classes,
        "image_size": size,
        "cache_size": saved.get("cache_size", size),  # an older model file: its image_size
        "resize": saved["resize"],
        "mean": [float(v) for v in saved["mean"]],
        "std": [float(v) for v in saved["std"]],
        "temperature": float(saved.get("temperature", 1.0)),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
            "description": (
                f"RGB images, NCHW, resized to cache_size x cache_size px by `resize`, "
                f"then the centre {size} x {size} px, "
                "normalised per channel as (x / 255 - mean) / std"
            ),
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", len(classes)],
            "description": "class scores in `classes` order; probabilities are "
            "softmax(logits / temperature)",
        },
        "source": {"model": str(model_path), "sha256": sha256_file(model_path)},
        # model.pt2 loads with this PyTorch or a newer one, not an older one.
        "torch": torch.__version__,
    }


def export(model_path: str | Path, out_dir: str | Path) -> dict[str, float]:
    """Write model.onnx, model.pt2 and model.json for the model file `model_path` into
    `out_dir`; returns the seconds each export took."""
    out = Path(out_dir)
    for chatty in ("onnxscript", "onnx_ir"):  # a line per optimiser pass at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    model, saved = load_model(model_path, torch.device("cpu"))
    model = model.float()
    size = saved["image_size"]
    seconds = {}
    with torch.no_grad():
        started = time.perf_counter()
        write_onnx(model, size, out / "model.onnx")
        seconds["onnx"] = time.perf_counter() - started
        started = time.perf_counter()
        write_program(model, size, out / "model.pt2")
        seconds["pt2"] = time.perf_counter() - started
    atomic.write_json(out / "model.json", sidecar(saved, model_path))
    log.info(
        "exported %s (%s, %d px) to %s: ONNX in %.1f s, torch.export program in %.1f s",
        model_path, saved["model_name"], size, out, seconds["onnx"], seconds["pt2"],
    )  # fmt: skip
    return seconds
