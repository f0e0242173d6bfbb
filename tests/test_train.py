"""Training as a plain function: outputs, checkpoints, determinism, resume rules, AMP."""

import csv
import json
import logging
import subprocess

import pytest
import torch
from helpers import REPO

from cvpipe import checkpoint
from cvpipe.errors import CvpipeError
from cvpipe.train import TrainConfig, amp_dtype, train, warmup_cosine

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


def test_amp_policy():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None
    assert amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", cpu) is torch.float16


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
