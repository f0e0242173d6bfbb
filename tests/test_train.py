"""Training as a plain function: outputs, checkpoints, determinism, resume rules, AMP."""

import csv
import json
import logging
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from train_steps import assert_learns, build, fit_steps

from cvpipe import checkpoint
from cvpipe.distributed import DistEnv, pick_device
from cvpipe.errors import CvpipeError
from cvpipe.parts import warmup_cosine
from cvpipe.runfiles import RunFiles
from cvpipe.runtime import amp_dtype
from cvpipe.train import (
    TrainConfig,
    device_preference,
    train,
)

TINY = {"model": "resnet18", "image_size": 32, "epochs": 2, "batch_size": 8, "warmup_epochs": 0.5}


def run(tiny_cache, out, **overrides):
    cfg = TrainConfig.from_dict({**TINY, **overrides})
    metrics = train(
        cfg,
        tiny_cache / "cache",
        out / "model.pt",
        out / "history.csv",
        out / "provenance.json",
        threads=2,
    )
    return cfg, metrics


def history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_outputs_checkpoint_and_provenance(tiny_cache, tmp_path):
    cfg, metrics = run(tiny_cache, tmp_path)
    rows = history(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc", "val_macro_f1", "lr"} <= set(rows[0])

    model_file = torch.load(tmp_path / "model.pt", weights_only=True)
    assert model_file["classes"] == ["dent", "ok", "scratch", "stain"]
    assert model_file["config"] == cfg.as_dict()
    assert model_file["epoch"] == metrics["epoch"]

    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "history",
        "best",
        "config",
        "identity",
    ):
        assert key in last
    (rng,) = last["rng_by_rank"]  # one entry per process
    assert set(rng["process"]) == {"python", "numpy", "torch", "cuda"} and "augment" in rng
    assert last["progress"] is None  # an epoch-end checkpoint
    assert last["epoch"] == 1 and len(last["history"]) == 2

    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["config"] == cfg.as_dict()
    assert (
        prov["data"]["manifest_sha256"]
        == json.loads((tiny_cache / "cache" / "stats.json").read_text())["manifest_sha256"]
    )
    assert set(prov["versions"]) >= {
        "python",
        "torch",
        "torchvision",
        "cuda",
        "cudnn",
        "opencv",
        "snakemake",
    }
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert prov["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert prov["device"]["type"] == "cpu" and prov["host"]
    assert prov["training"]["global_batch"] == 8 and prov["training"]["world_size"] == 1
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_same_seed_same_model(tiny_cache, tmp_path):
    run(tiny_cache, tmp_path / "a")
    run(tiny_cache, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def strip(rows):  # wall-clock columns differ between runs; everything else must not
        return [
            {k: v for k, v in r.items() if k not in ("epoch_seconds", "train_images_per_s")}
            for r in rows
        ]

    assert strip(history(tmp_path / "a")) == strip(history(tmp_path / "b"))


def test_resume_only_with_same_settings(tiny_cache, tmp_path, caplog):
    run(tiny_cache, tmp_path)
    first = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    with caplog.at_level(logging.INFO, logger="cvpipe"):
        run(tiny_cache, tmp_path)  # finished checkpoint, same settings: nothing to train
    assert "completed epoch 2 of 2" in caplog.text
    assert "epoch 1/2" not in caplog.text
    again = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cvpipe"):
        run(tiny_cache, tmp_path, lr=0.01)  # other settings: the old checkpoint must not be used
    assert "not resuming" in caplog.text and "epoch 1/2" in caplog.text
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["config"]["lr"] == 0.01


def test_bf16_autocast_runs_on_cpu(tiny_cache, tmp_path):
    run(tiny_cache, tmp_path, epochs=1, amp="bf16")
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["training"]["amp_dtype"] == "bfloat16"


def test_fp16_with_grad_scaler_skips_an_overflowing_step_and_goes_on(tiny_cache):
    # No warm-up: the schedule waits out skipped steps, so a warm-up would end just after the
    # overflow, and its last jump in learning rate would hide the learning this test looks for.
    parts, env = build(tiny_cache / "cache", "cpu", amp="fp16", warmup_epochs=0)
    assert parts.amp == "float16" and parts.scaler.is_enabled()
    # Enough steps after the overflow to see learning through the step-to-step noise of
    # BatchNorm on one batch (channels_last, the default, is the noisier memory format here).
    steps = fit_steps(parts, env, 14, overflow_at=5)
    # The first steps find the scale (2**16 overflows here and backs off); by step 5 it is set.
    settled, overflow, after = steps[4], steps[5], steps[6:]
    assert settled.weights_changed
    assert not overflow.weights_changed  # the overflowing step was skipped
    assert overflow.scale == settled.scale / 2  # and the scale backed off
    assert_learns(after)  # then training goes on, finite and learning
    assert after[-1].loss < steps[0].loss


def test_bf16_learns_on_cpu(tiny_cache):
    parts, env = build(tiny_cache / "cache", "cpu", amp="bf16")
    assert parts.amp == "bfloat16" and not parts.scaler.is_enabled()
    assert not parts.optimizer.defaults["fused"]  # the fused AdamW is for CUDA only
    assert_learns(fit_steps(parts, env, 5))


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")),
    reason="torch.compile on the CPU (inductor) needs a C++ compiler",
)
def test_compile_trains_on_cpu(tiny_cache, tmp_path):
    _, metrics = run(tiny_cache, tmp_path, epochs=1, compile=True)
    assert 0 <= metrics["val_acc"] <= 1
    assert all(float(r["train_loss"]) < 10 for r in history(tmp_path))
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod.") for k in weights)  # the plain model is saved


def test_amp_policy():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None
    assert amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", cpu) is torch.float16


def test_auto_amp_takes_fp16_where_bf16_is_only_emulated(monkeypatch):
    cuda = torch.device("cuda")

    def v100(including_emulation: bool = True) -> bool:  # bf16 by emulation only
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", v100)
    assert amp_dtype("auto", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype("auto", cuda) is torch.bfloat16  # an A100 or newer


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_resume_loads_every_tensor_on_the_cpu(tiny_cache, tmp_path):
    cfg, _ = run(tiny_cache, tmp_path, epochs=1)
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    identity = state["identity"]
    # A process whose device is not the CPU ("meta" stands in for a GPU here): RNG states and
    # all the rest must still come back on the CPU, where restoring them needs them.
    elsewhere = DistEnv(device=torch.device("meta"))
    files = RunFiles(tmp_path / "model.pt", tmp_path / "history.csv", elsewhere)
    resumed = checkpoint.try_resume(files.last_checkpoint, identity, cfg.epochs)
    tensors = list(_tensors(resumed))
    assert len(tensors) > 100  # model, optimizer moments, RNG states
    assert {t.device.type for t in tensors} == {"cpu"}


@pytest.mark.parametrize(
    "runtime",
    [{"device_type": "cuda", "amp": "off"}, {"device_type": "cpu", "amp": "bfloat16"}],
    ids=["other-device-type", "other-amp-dtype"],
)
def test_checkpoint_from_another_device_or_amp_starts_over(tiny_cache, tmp_path, caplog, runtime):
    run(tiny_cache, tmp_path, epochs=1)
    last = tmp_path / "checkpoints" / "last.pt"
    state = checkpoint.load(last)
    assert state["identity"]["runtime"] == {"device_type": "cpu", "amp": "off"}
    state["identity"]["runtime"] = runtime  # as if written by a GPU run / with other AMP
    checkpoint.save(last, {k: v for k, v in state.items() if k != "format_version"})
    with caplog.at_level(logging.INFO, logger="cvpipe"):
        run(tiny_cache, tmp_path, epochs=1)
    assert (
        f"it was trained on {runtime['device_type']} with amp {runtime['amp']}, "
        "this run is on cpu with amp off" in caplog.text
    )
    assert "training starts from scratch" in caplog.text and "epoch 1/1" in caplog.text
    assert checkpoint.load(last)["identity"]["runtime"] == {"device_type": "cpu", "amp": "off"}


def test_gpus_0_means_the_cpu_even_where_cuda_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(device_preference(TrainConfig(gpus=0))) == torch.device("cpu")
    assert pick_device(device_preference(TrainConfig(gpus=1))) == torch.device("cuda", 0)
    assert pick_device(device_preference(TrainConfig(gpus=0, device="cuda"))).type == "cuda"


def test_gpus_0_training_never_initialises_cuda(tiny_cache, tmp_path):
    script = f"""
import torch
from pathlib import Path
from cvpipe.train import TrainConfig, train
out = Path({str(tmp_path)!r})
cfg = TrainConfig.from_dict({{**{TINY!r}, "epochs": 1, "gpus": 0}})
train(cfg, Path({str(tiny_cache / "cache")!r}), out / "model.pt", out / "history.csv",
      out / "provenance.json", threads=2)
print("cuda initialised:", torch.cuda.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cuda initialised: False" in done.stdout
    assert json.loads((tmp_path / "provenance.json").read_text())["device"]["type"] == "cpu"


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    warm = [f(s) for s in range(10)]
    assert warm == sorted(warm) and warm[-1] == 1.0
    decay = [f(s) for s in range(10, 101)]
    assert decay == sorted(decay, reverse=True)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_bad_settings_are_named(tiny_cache, tmp_path):
    with pytest.raises(CvpipeError, match=r"unknown training setting\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(CvpipeError, match="amp must be one of"):
        TrainConfig.from_dict({"amp": "fp8"})
    with pytest.raises(CvpipeError, match="fewer than one batch of 64"):
        run(tiny_cache, tmp_path, batch_size=64)
    with pytest.raises(CvpipeError, match="holds 32 px images but image_size is 48"):
        run(tiny_cache, tmp_path, image_size=48)
    with pytest.raises(
        CvpipeError, match="holds 32 px images but image_size is 32 and cache_size 37"
    ):
        run(tiny_cache, tmp_path, cache_size=37)
    with pytest.raises(CvpipeError, match="cache_size 24 is smaller than image_size 32"):
        run(tiny_cache, tmp_path, cache_size=24)


@pytest.fixture(scope="module")
def natural_cache(tiny_cache, tmp_path_factory):
    """The tiny data preprocessed to 37 px: the natural preset's auto cache for 32 px."""
    from cvpipe.preprocess import preprocess

    out = tmp_path_factory.mktemp("natural_cache") / "cache"
    preprocess(tiny_cache / "manifest.csv", tiny_cache / "data", out, size=37)
    return out


NATURAL = {**TINY, "epochs": 2, "augment": {"preset": "natural", "random_erasing": 0.25}}


def natural_run(cache, out):
    cfg = TrainConfig.from_dict(NATURAL)
    paths = (out / "model.pt", out / "history.csv", out / "provenance.json")
    return train(cfg, cache, *paths, threads=2)


def test_random_resized_crops_resume_mid_epoch_to_the_same_model(
    natural_cache, tmp_path, monkeypatch
):
    """The crop, flip, jitter and erasing draws come from the checkpointed generator: a run
    stopped mid-epoch and resumed ends with the uninterrupted run's weights and history."""
    from cvpipe import preemption
    from cvpipe.errors import Preempted

    natural_run(natural_cache, tmp_path / "whole")
    steps = len(history(tmp_path / "whole"))  # epochs; 3 steps each (24 images, batch 8)
    calls = {"n": 0}
    real_due = preemption.StopRequest.due

    def due(self, steps_done):
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # during step 2 of epoch 2
            self.signal = signal.SIGUSR1
        return real_due(self, steps_done)

    monkeypatch.setattr(preemption.StopRequest, "due", due)
    with pytest.raises(Preempted, match="in epoch 2 after 2 of 3 batches"):
        natural_run(natural_cache, tmp_path / "stopped")
    monkeypatch.setattr(preemption.StopRequest, "due", real_due)
    natural_run(natural_cache, tmp_path / "stopped")
    whole = checkpoint.load(tmp_path / "whole" / "model.pt")
    resumed = checkpoint.load(tmp_path / "stopped" / "model.pt")
    assert whole["cache_size"] == resumed["cache_size"] == 37 and whole["image_size"] == 32
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    strip = {"epoch_seconds", "train_images_per_s"}
    assert [
        {k: v for k, v in r.items() if k not in strip} for r in history(tmp_path / "whole")
    ] == [{k: v for k, v in r.items() if k not in strip} for r in history(tmp_path / "stopped")]
    assert steps == 2
