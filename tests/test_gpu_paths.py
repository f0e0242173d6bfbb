"""GPU checks of the paths around training, for the first machine with a CUDA GPU.

Marked `gpu`: skipped (with the reason shown) where CUDA is absent, as on the CPU machines that
run CI; on a GPU machine `pytest -m gpu` runs them (benchmarks/gpu_checks.sh does, in one call)
and a failed check fails. The training step itself (AMP, channels_last, compile, NCCL DDP,
resume) is checked in tests/test_gpu.py; this file covers the GPU-id allocator on real devices,
evaluation on the GPU and deterministic mode.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from helpers import BIN

from cvpipe.evaluate import evaluate
from cvpipe.train import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
TINY = {"model": "resnet18", "image_size": 32, "epochs": 2, "batch_size": 8, "gpus": 1}
SEES = (
    "import os, torch; print(os.environ['CUDA_VISIBLE_DEVICES'], torch.cuda.device_count(),"
    " torch.cuda.get_device_properties(0).uuid)"
)


def gpus_job(tmp_path, *command: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CVPIPE_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    return subprocess.Popen(
        [str(BIN / "cvpipe"), "gpus", "--count", "1", "--", *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_allocator_gives_each_job_one_real_device_of_its_own(tmp_path):
    """Two jobs at once: on two GPUs they see different devices; on one, the second waits."""
    hold = [sys.executable, "-c", SEES + "; import time; time.sleep(3)"]
    first = gpus_job(tmp_path, *hold)
    time.sleep(0.5)
    started = time.time()
    second = gpus_job(tmp_path, *hold)
    outputs = [p.communicate(timeout=120)[0].split() for p in (first, second)]
    waited = time.time() - started
    assert all(p.returncode == 0 for p in (first, second))
    assert all(out[1] == "1" for out in outputs)  # each job sees exactly one device
    if torch.cuda.device_count() >= 2:
        assert outputs[0][0] != outputs[1][0] and outputs[0][2] != outputs[1][2]
    else:
        assert outputs[0][0] == outputs[1][0] and waited >= 5  # the second waited for the first


def run_training(tiny_cache, out, **overrides) -> list[dict]:
    cfg = TrainConfig.from_dict({**TINY, **overrides})
    train(cfg, tiny_cache / "cache", out / "model.pt", out / "history.csv", out / "prov.json")
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_evaluation_runs_on_the_gpu(tiny_cache, tmp_path):
    run_training(tiny_cache, tmp_path)
    metrics = evaluate(
        tmp_path / "model.pt", tiny_cache / "cache", tiny_cache / "manifest.csv",
        tmp_path / "metrics.json", tmp_path / "predictions.csv", tmp_path / "timing.json",
        device="cuda",
    )  # fmt: skip
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and timing["inference_images_per_s"] > 0
    assert "cuda" in json.dumps(timing).lower()  # the timing names the device it measured


def test_deterministic_mode_repeats_exactly_on_the_gpu(tiny_cache, tmp_path):
    rows = [run_training(tiny_cache, tmp_path / run, deterministic=True) for run in "ab"]
    keys = ("train_loss", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]
