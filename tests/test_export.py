"""`cvpipe export`: the ONNX file and the torch.export program compute what the trained model
computes, at any batch size; model.json says how to use them; the workflow's rule writes exactly
its declared files; running the ONNX file without onnxruntime says what to install."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import BIN, REPO, copy_run, planned_jobs, snakemake, tool_env

from cvpipe.errors import CvpipeError
from cvpipe.evaluate import load_model
from cvpipe.export import sidecar
from cvpipe.onnxmodel import load_onnx

pytestmark = pytest.mark.slow

EXPERIMENT = "resnet18"  # 32 px in tests/configs/tiny.yaml
FILES = {"model.onnx", "model.pt2", "model.json"}
BATCH_SIZES = (1, 7)  # one exported model at both: the batch axis is dynamic


def all_files(root: Path) -> set[str]:
    """Every file below `root` but Snakemake's own bookkeeping (.snakemake/)."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != ".snakemake"
    }


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory) -> dict:
    """A copy of the tiny run with the export rule run by snakemake for one experiment: the
    files before and after, and what snakemake said (one export, shared by the tests)."""
    work = copy_run(tiny_run, tmp_path_factory.mktemp("export") / "run")
    before = all_files(work)
    targets = [f"results/{EXPERIMENT}/export/{name}" for name in sorted(FILES)]
    proc = snakemake(work, *targets)
    return {"work": work, "before": before, "after": all_files(work), "proc": proc}


@pytest.fixture(scope="module")
def out(run: dict) -> Path:
    return run["work"] / "results" / EXPERIMENT / "export"


def test_rule_writes_exactly_its_declared_files(run, out):
    assert {p.name for p in out.iterdir()} == FILES  # no model.onnx.data, no temp files
    new = run["after"] - run["before"]
    assert new == {f"results/{EXPERIMENT}/export/{name}" for name in FILES} | {
        f"results/logs/export/{EXPERIMENT}.log"
    }
    assert "rule train:" not in run["proc"].stderr  # exporting never retrains


def test_export_is_optional_in_rule_all(run):
    assert "export" not in planned_jobs(run["work"])
    # export: true makes rule all request every experiment's files (this one's already exist).
    cfg = run["work"] / "export-on.yaml"
    cfg.write_text("export: true\n")
    configs = [REPO / "config" / "config.yaml", REPO / "tests" / "configs" / "tiny.yaml", cfg]
    assert planned_jobs(run["work"], configfiles=configs) == {"export": 1, "all": 1}


def _batches(run: dict, info: dict) -> list[np.ndarray]:
    """Test images, normalised as model.json says, in batches of BATCH_SIZES."""
    images = np.load(run["work"] / "results" / "dataset" / "cache" / "32px" / "test_images.npy")
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    mean = np.asarray(info["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(info["std"], np.float32).reshape(1, 3, 1, 1)
    x = (x - mean) / std
    return [x[:n] for n in BATCH_SIZES]


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits)) / temperature, dim=1).numpy()


def test_onnx_and_program_agree_with_pytorch_at_every_batch_size(run, out):
    model, _ = load_model(run["work"] / "results" / EXPERIMENT / "train" / "model.pt", "cpu")
    onnx_run, info = load_onnx(out / "model.onnx")
    program = torch.export.load(out / "model.pt2").module()
    t = info["temperature"]
    for batch in _batches(run, info):
        with torch.no_grad():
            expected = _softmax(model(torch.from_numpy(batch)).numpy(), t)
            from_program = _softmax(program(torch.from_numpy(batch)).numpy(), t)
        from_onnx = _softmax(onnx_run(batch), t)
        assert from_onnx.shape == expected.shape == (len(batch), len(info["classes"]))
        assert np.abs(from_onnx - expected).max() <= 1e-4, len(batch)
        assert np.abs(from_program - expected).max() <= 1e-4, len(batch)


def test_sidecar_describes_the_model(run, out):
    model_path = run["work"] / "results" / EXPERIMENT / "train" / "model.pt"
    saved = torch.load(model_path, weights_only=True)
    info = json.loads((out / "model.json").read_text())
    assert info["classes"] == saved["classes"] == ["dent", "ok", "scratch", "stain"]
    assert (info["image_size"], info["resize"]) == (32, saved["resize"])
    assert info["model_name"] == "resnet18"
    assert info["mean"] == pytest.approx(saved["mean"]) and info["std"] == pytest.approx(
        saved["std"]
    )
    assert info["temperature"] == saved["temperature"] > 0  # fitted at the end of training
    assert info["source"]["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert info["torch"] == torch.__version__  # model.pt2 needs this PyTorch or newer
    # The names and shapes it states are the ONNX file's.
    graph = onnx.load(out / "model.onnx").graph
    (inp,), (output,) = graph.input, graph.output
    assert (inp.name, output.name) == (info["input"]["name"], info["output"]["name"])
    assert (info["input"]["name"], info["output"]["name"]) == ("images", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == info["input"]["shape"][1:] == [3, 32, 32]
    assert isinstance(dims[0], str)  # symbolic: any batch size


def test_sidecar_carries_the_model_temperature(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    saved = {
        "model_name": "resnet18", "classes": ["a", "b"], "image_size": 32, "resize": "crop",
        "mean": [0.5] * 3, "std": [0.25] * 3, "temperature": 1.7,
    }  # fmt: skip
    assert sidecar(saved, model)["temperature"] == 1.7
    assert sidecar(saved, model)["cache_size"] == 32  # an older model file: its image_size
    assert sidecar({**saved, "cache_size": 37}, model)["cache_size"] == 37  # then a centre crop


def test_missing_sidecar_is_named(out, tmp_path):
    shutil.copy(out / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(CvpipeError, match=r"model\.json"):
        load_onnx(tmp_path / "model.onnx")


def test_a_renamed_model_finds_its_own_sidecar(out, tmp_path):
    shutil.copy(out / "model.onnx", tmp_path / "defects.onnx")
    info = json.loads((out / "model.json").read_text())
    (tmp_path / "defects.json").write_text(json.dumps({**info, "classes": ["a", "b", "c", "d"]}))
    _, found = load_onnx(tmp_path / "defects.onnx")
    assert found["classes"] == ["a", "b", "c", "d"]


def test_without_onnxruntime_the_message_says_what_to_install(out):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from pathlib import Path\n"
        "from cvpipe.errors import CvpipeError\n"
        "from cvpipe.onnxmodel import load_onnx\n"
        "try:\n"
        f"    load_onnx(Path({str(out / 'model.onnx')!r}))\n"
        "except CvpipeError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(1)\n"
    )
    env = {
        **tool_env(),
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [str(BIN / "python"), "-c", code], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1, proc.stderr
    assert "onnxruntime" in proc.stdout and "pip install 'cvpipe[export]'" in proc.stdout
