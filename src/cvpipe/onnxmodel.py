"""Run an exported ONNX model (`cvpipe export`) with onnxruntime, without torch.

`load_onnx(path)` returns a function from a float32 N x 3 x S x S batch, normalised as the
sidecar says, to the logits (N x classes), and the sidecar itself (`model.json` beside the
.onnx file). onnxruntime is an optional dependency: `pip install 'cvpipe[export]'`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cvpipe.errors import CvpipeError

INSTALL = "pip install 'cvpipe[export]'"


def sidecar_path(path: Path) -> Path:
    """The sidecar of an .onnx file: `<stem>.json` beside it, else `model.json` in its folder
    (`cvpipe export` writes model.onnx + model.json)."""
    candidates = [path.with_suffix(".json"), path.parent / "model.json"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise CvpipeError(
            f"{path} has no sidecar ({' or '.join(str(c) for c in dict.fromkeys(candidates))}): "
            "it says how to prepare images and read the logits. Keep the model.json that "
            "`cvpipe export` wrote beside the .onnx file."
        )
    return found


def _read_sidecar(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CvpipeError(f"cannot read {path} ({exc}); rerun `cvpipe export`.") from None
    if not isinstance(info, dict) or not {"classes", "image_size", "mean", "std"} <= info.keys():
        raise CvpipeError(f"{path} is not a model.json written by `cvpipe export`; rerun it.")
    return info


def _providers(available: list[str]) -> list[str]:
    """CUDA first where this onnxruntime build has it (onnxruntime-gpu), the CPU always."""
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load_onnx(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """(batch -> logits, sidecar) for the ONNX model at `path`."""
    path = Path(path)
    if not path.is_file():
        raise CvpipeError(f"{path} does not exist: write it with `cvpipe export`.")
    info = _read_sidecar(sidecar_path(path))
    try:
        import onnxruntime
    except ImportError:
        raise CvpipeError(
            f"running {path} needs onnxruntime, which is not installed: {INSTALL}"
        ) from None
    try:
        session = onnxruntime.InferenceSession(
            str(path), providers=_providers(onnxruntime.get_available_providers())
        )
    except Exception as exc:  # onnxruntime raises its own (undocumented) exception types
        raise CvpipeError(f"onnxruntime cannot load {path}: {exc}") from None
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    shape = (3, info["image_size"], info["image_size"])

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != shape:
            raise CvpipeError(
                f"{path} takes a float32 batch of N x {' x '.join(map(str, shape))}, "
                f"got {' x '.join(map(str, batch.shape))}"
            )
        return np.asarray(session.run([output_name], {input_name: batch})[0])

    return run, info
