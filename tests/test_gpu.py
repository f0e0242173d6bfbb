"""Checks that need a real CUDA device: AMP, channels-last, compile, NCCL DDP, resume, and
predict and Grad-CAM on the GPU.

Skipped, with the reason shown, where no GPU is visible (`pytest -m gpu` lists them); on a GPU
machine a failed check fails the test. The same checks on the CPU live in test_train.py,
test_ddp.py and test_preemption.py; the steps come from the same helpers.
"""

from __future__ import annotations

import logging
import signal

import pytest
import torch
from helpers import assert_ddp_step_equals_single_process_step
from train_steps import assert_learns, build, fit_steps

from cvpipe import checkpoint, preemption
from cvpipe.errors import Preempted
from cvpipe.train import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SETTINGS = {"model": "resnet18", "image_size": 32, "batch_size": 4, "warmup_epochs": 0.5}


def native_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


@pytest.mark.parametrize(
    ("amp", "dtype"),
    [
        pytest.param(
            "bf16",
            "bfloat16",
            marks=pytest.mark.skipif(not native_bf16(), reason="needs a GPU with native bf16"),
        ),
        ("fp16", "float16"),
    ],
)
def test_amp_learns_on_cuda(tiny_cache, amp, dtype):
    parts, env = build(tiny_cache / "cache", "cuda", amp=amp)
    assert parts.amp == dtype and next(parts.model.parameters()).is_cuda
    assert parts.scaler.is_enabled() == (amp == "fp16")
    assert parts.optimizer.defaults["fused"]  # one fused AdamW kernel on CUDA
    steps = fit_steps(parts, env, 10)
    # fp16's first steps may be skipped while the GradScaler finds its scale.
    assert_learns(steps[-5:] if amp == "fp16" else steps)


def test_channels_last_learns_on_cuda(tiny_cache):
    parts, env = build(tiny_cache / "cache", "cuda", channels_last=True)
    images, _ = next(iter(parts.train_loader))
    x = parts.train_transform(images.cuda())
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert parts.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    steps = fit_steps(parts, env, 8)
    assert_learns(steps[-4:])


def test_compile_learns_on_cuda(tiny_cache):
    parts, env = build(tiny_cache / "cache", "cuda", compile=True, amp="off")
    assert_learns(fit_steps(parts, env, 6))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_nccl_ddp_step_equals_single_process_step(tiny_cache, tmp_path):
    assert_ddp_step_equals_single_process_step(tiny_cache / "cache", tmp_path, "cuda")


def run(cache, out, **overrides):
    cfg = TrainConfig.from_dict({**SETTINGS, "epochs": 3, **overrides})
    return train(cfg, cache, out / "model.pt", out / "history.csv", threads=2)


def test_resume_on_gpu_then_moving_to_the_cpu_starts_over(
    tiny_cache, tmp_path, monkeypatch, caplog
):
    calls = {"n": 0}
    real_due = preemption.StopRequest.due

    def due(self, steps_done):  # a signal during step 3 of epoch 2 (6 steps per epoch)
        calls["n"] += 1
        if calls["n"] == 6 + 3:
            self.signal = signal.SIGUSR1
        return real_due(self, steps_done)

    monkeypatch.setattr(preemption.StopRequest, "due", due)
    with pytest.raises(Preempted, match="in epoch 2 after 3 of 6 batches"):
        run(tiny_cache / "cache", tmp_path, gpus=1)
    last = tmp_path / "checkpoints" / "last.pt"
    assert checkpoint.load(last)["identity"]["runtime"]["device_type"] == "cuda"
    monkeypatch.setattr(preemption.StopRequest, "due", real_due)
    with caplog.at_level(logging.INFO, logger="cvpipe"):
        run(tiny_cache / "cache", tmp_path, gpus=1)  # resumes on the GPU
    assert "(epoch 2 of 3, after 3 batches)" in caplog.text
    assert checkpoint.load(last)["epoch"] == 2

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cvpipe"):
        run(tiny_cache / "cache", tmp_path, gpus=0)  # the same run moved to the CPU
    assert "it was trained on cuda with amp" in caplog.text
    assert "this run is on cpu with amp off" in caplog.text
    assert checkpoint.load(last)["identity"]["runtime"]["device_type"] == "cpu"


def test_predict_and_gradcam_on_cuda_agree_with_the_cpu(tiny_cache, tmp_path):
    """After training: a GPU-trained model predicts the same probabilities on the GPU (its AMP
    setting, channels-last) as on the CPU, and its Grad-CAM maps agree."""
    import numpy as np

    from cvpipe.evaluate import load_model
    from cvpipe.gradcam import grad_cam, target_layer
    from cvpipe.predict import load_predictor, run_batches

    run(tiny_cache / "cache", tmp_path, gpus=1, epochs=1)
    files = sorted((tiny_cache / "data").rglob("*.png"))
    probs, cams = {}, {}
    x = torch.randn(2, 3, 32, 32)
    for device in (torch.device("cpu"), torch.device("cuda")):
        predictor = load_predictor(str(tmp_path / "model.pt"), None, device)
        _, probs[device.type], bad = run_batches(predictor, files, 16, 2, stop_on_bad=True)
        assert not bad
        model, _ = load_model(tmp_path / "model.pt", device)
        _, layer = target_layer(model, 32)
        cams[device.type] = grad_cam(model, x.to(device), [0, 1], layer)
    assert probs["cuda"].shape == (len(files), 4)
    np.testing.assert_allclose(probs["cuda"], probs["cpu"], atol=5e-2)  # bf16 autocast
    np.testing.assert_allclose(cams["cuda"], cams["cpu"], atol=2e-2)  # TF32 convolutions
