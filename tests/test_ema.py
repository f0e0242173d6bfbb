"""EMA of the weights: what it averages, its warm-up, its place in history and model file, and a
resume mid-epoch (with Mixup/CutMix on too) that ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import csv
import json
import signal
import subprocess

import pytest
import torch
from helpers import BIN, tool_env
from train_steps import build

from cvpipe import checkpoint, preemption
from cvpipe.ema import EmaModel, warmup_decay
from cvpipe.epoch import evaluate_split, train_one_epoch
from cvpipe.errors import CvpipeError, Preempted
from cvpipe.evaluate import load_model
from cvpipe.train import TrainConfig, train

# 6 steps per epoch (24 training images, batch 4), as tests/test_preemption.py.
SETTINGS = {
    "model": "resnet18", "image_size": 32, "epochs": 2, "batch_size": 4, "warmup_epochs": 0.5,
    "ema_decay": 0.9,
}  # fmt: skip


def run(cache, out, **overrides):
    cfg = TrainConfig.from_dict({**SETTINGS, **overrides})
    return train(cfg, cache, out / "model.pt", out / "history.csv", threads=2)


def history(out):
    with open(out / "history.csv") as f:
        return [
            {k: v for k, v in r.items() if k not in ("epoch_seconds", "train_images_per_s")}
            for r in csv.DictReader(f)
        ]


def test_decay_0_follows_the_model_weights_and_buffers(tiny_cache):
    parts, env = build(tiny_cache / "cache", "cpu", ema_decay=0.0)
    assert parts.ema is not None
    batches = [next(iter(parts.train_loader))] * 3
    train_one_epoch(parts, batches, env)
    ema, model = parts.ema.module.state_dict(), parts.model.state_dict()
    assert ema.keys() == model.keys()
    assert any("running_mean" in k for k in ema)  # BatchNorm statistics are followed too
    for key in model:
        assert torch.equal(ema[key], model[key]), key
    assert int(parts.ema.n_averaged) == 3


def test_decay_warms_up_and_averages(tiny_cache):
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.999, 10**6) == 0.999 and warmup_decay(0.0, 5) == 0.0
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EmaModel(model, decay=0.5)
    for value in (1.0, 3.0, 5.0):
        model.weight.data.fill_(value)
        ema.update(model)
    # 1 (copied), then decay min(0.5, 2/11): 3 - 2/11 * 2, then min(0.5, 3/12) = 0.25.
    second = 3.0 - 2 / 11 * 2
    expected = 0.25 * second + 0.75 * 5.0
    assert ema.module.weight.item() == pytest.approx(expected)
    with pytest.raises(CvpipeError, match="ema_decay must be null"):
        EmaModel(model, decay=1.0)


def test_the_update_is_torchs_averaged_model_with_the_warmed_up_ema_function():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def reference_fn(averaged, current, n_averaged):
        get_ema_multi_avg_fn(warmup_decay(0.9, int(n_averaged)))(averaged, current, n_averaged)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ours = EmaModel(model, decay=0.9)
    reference = AveragedModel(model, multi_avg_fn=reference_fn, use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        optimizer.step()
        ours.update(model)
        reference.update_parameters(model)
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_history_model_file_and_loaders_know_the_ema(tiny_cache, tmp_path):
    metrics = run(tiny_cache / "cache", tmp_path, epochs=1)
    (row,) = history(tmp_path)
    assert {"ema_val_loss", "ema_val_acc", "ema_val_macro_f1"} <= set(row)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    which = saved["weights"]
    assert which in ("ema", "model")
    # The saved weights are the ones that scored better on val_acc (ties: lower val loss).
    ema_key = (metrics["ema_val_acc"], -metrics["ema_val_loss"])
    assert (which == "ema") == (ema_key > (metrics["val_acc"], -metrics["val_loss"]))
    last = checkpoint.load(tmp_path / "checkpoints" / "last.pt")  # one epoch: best is last
    held = (
        {k.removeprefix("module."): v for k, v in last["ema"].items() if k != "n_averaged"}
        if which == "ema"
        else last["model"]
    )
    assert all(torch.equal(saved["model"][k], held[k]) for k in held)
    assert int(last["ema"]["n_averaged"]) == 6
    model, _ = load_model(tmp_path / "model.pt", torch.device("cpu"))  # evaluate/predict/export
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())


def test_without_ema_checkpoints_and_identity_stay_as_before(tiny_cache, tmp_path):
    cfg = TrainConfig.from_dict({**SETTINGS, "ema_decay": None, "epochs": 1})
    assert not {"ema_decay", "mixup_alpha", "cutmix_alpha"} & set(cfg.identity())
    train(cfg, tiny_cache / "cache", tmp_path / "model.pt", tmp_path / "history.csv", threads=2)
    assert "ema" not in checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert not any(k.startswith("ema_") for k in history(tmp_path)[0])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weights"] == "model"


# One epoch, stopped after 3 of its 6 steps (the mid-epoch resume of a later epoch is
# tests/test_preemption.py's): EMA, Mixup and CutMix draws must all continue exactly.
MIXED = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "epochs": 1}


@pytest.fixture(scope="module")
def uninterrupted(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema_uninterrupted")
    run(tiny_cache / "cache", out, **MIXED)
    return out


def test_ema_resumed_mid_epoch_ends_as_an_uninterrupted_run(
    tiny_cache, uninterrupted, tmp_path, monkeypatch
):
    calls = {"n": 0}
    real_due = preemption.StopRequest.due

    def due(self, steps_done):  # a signal "arrives" during step 3
        calls["n"] += 1
        if calls["n"] == 3:
            self.signal = signal.SIGUSR1
        return real_due(self, steps_done)

    monkeypatch.setattr(preemption.StopRequest, "due", due)
    with pytest.raises(Preempted, match="in epoch 1 after 3 of 6 batches"):
        run(tiny_cache / "cache", tmp_path, **MIXED)
    stopped = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert int(stopped["ema"]["n_averaged"]) == 3
    monkeypatch.setattr(preemption.StopRequest, "due", real_due)
    run(tiny_cache / "cache", tmp_path, **MIXED)  # the retry

    a = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    b = checkpoint.load(uninterrupted / "checkpoints" / "last.pt")
    for part in ("ema", "model"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert history(tmp_path) == history(uninterrupted)
    saved = [torch.load(o / "model.pt", weights_only=True) for o in (tmp_path, uninterrupted)]
    assert saved[0]["weights"] == saved[1]["weights"]
    assert all(torch.equal(saved[0]["model"][k], saved[1]["model"][k]) for k in saved[0]["model"])


@pytest.mark.slow
def test_ema_and_mixing_under_ddp_validate_the_ema_rank_0_saves(tiny_cache, tmp_path):
    """2 processes (gloo): each rank's BatchNorm statistics differ, so the EMA's are made rank
    0's before validation: the history's EMA scores are those of the EMA in last.pt."""
    config = json.dumps({**SETTINGS, **MIXED, "ddp_processes": 2})
    paths = {"model": "model.pt", "history": "history.csv", "provenance": "provenance.json"}
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "cvpipe"]
    options = [f"--{key}={tmp_path / name}" for key, name in paths.items()]
    cmd = [*torchrun, "train", "--config", config, f"--cache-dir={tiny_cache / 'cache'}"]
    done = subprocess.run(
        [*cmd, *options, "--threads", "1", "--cache-scratch", ""],
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (row,) = history(tmp_path)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["weights"]
    assert weights in ("ema", "model")
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["training"]["saved_weights"] == weights

    parts, env = build(tiny_cache / "cache", "cpu", **{**SETTINGS, **MIXED})
    assert parts.ema is not None
    parts.ema.load_state_dict(checkpoint.load(tmp_path / "checkpoints" / "last.pt")["ema"])
    alone = evaluate_split(parts, parts.val_loader, env, parts.ema.module)
    assert float(row["ema_val_loss"]) == pytest.approx(alone["loss"], rel=1e-5)
    assert float(row["ema_val_acc"]) == alone["acc"]
