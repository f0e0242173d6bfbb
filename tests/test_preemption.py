"""Stopping on SIGUSR1/SIGTERM: checkpoint the exact position (mid-epoch too), exit 75, and
resume to the same model an uninterrupted run ends with."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import BIN, tool_env

from cvpipe import preemption
from cvpipe.distributed import DistEnv
from cvpipe.errors import EXIT_PREEMPTED, Preempted
from cvpipe.train import TrainConfig, train

SETTINGS = {
    "model": "resnet18",
    "image_size": 32,
    "epochs": 3,
    "batch_size": 4,
    "warmup_epochs": 0.5,
}


def run(cache, out):
    cfg = TrainConfig.from_dict(SETTINGS)
    return train(
        cfg, cache, out / "model.pt", out / "history.csv", out / "provenance.json", threads=2
    )


def same_weights(a, b) -> bool:
    wa = torch.load(a / "model.pt", weights_only=True)["model"]
    wb = torch.load(b / "model.pt", weights_only=True)["model"]
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def rows(out):
    with open(out / "history.csv") as f:
        return [
            {k: v for k, v in r.items() if k not in ("epoch_seconds", "train_images_per_s")}
            for r in csv.DictReader(f)
        ]


@pytest.fixture(scope="module")
def uninterrupted(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run(tiny_cache / "cache", out)
    return out


def test_stop_mid_epoch_then_resume_gives_the_same_model(
    tiny_cache, uninterrupted, tmp_path, monkeypatch
):
    # A signal "arrives" during step 3 of epoch 2 (6 steps per epoch): deterministic, so the
    # checkpoint is surely mid-epoch.
    calls = {"n": 0}
    real_due = preemption.StopRequest.due

    def due(self, steps_done):
        calls["n"] += 1
        if calls["n"] == 6 + 3:
            self.signal = signal.SIGUSR1
        return real_due(self, steps_done)

    monkeypatch.setattr(preemption.StopRequest, "due", due)
    with pytest.raises(Preempted, match="stopped by SIGUSR1 in epoch 2 after 3 of 6 batches"):
        run(tiny_cache / "cache", tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["progress"]["batches"] == 3
    assert len(state["history"]) == 1
    monkeypatch.setattr(preemption.StopRequest, "due", real_due)
    run(tiny_cache / "cache", tmp_path)  # the retry
    assert same_weights(tmp_path, uninterrupted)
    assert rows(tmp_path) == rows(uninterrupted)  # no epoch counted twice, the same numbers


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_real_signal_checkpoints_and_exits_75(tiny_cache, uninterrupted, tmp_path, sig):
    paths = ["--model", str(tmp_path / "model.pt"), "--history", str(tmp_path / "history.csv")]
    cache = ["--cache-dir", str(tiny_cache / "cache")]
    cmd = [
        str(BIN / "cvpipe"),
        "train",
        "--config",
        json.dumps(SETTINGS),
        *cache,
        *paths,
        "--threads",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = tmp_path / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    # Two epochs were left when the signal went out: the run cannot have finished first.
    assert proc.returncode == EXIT_PREEMPTED, err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    resumed = subprocess.run(cmd, env=tool_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert same_weights(tmp_path, uninterrupted)


def _stop_step(rank: int, store_file: str, results: str) -> None:
    """One of two gloo ranks: steps 1..40, rank 1 gets a signal after step 5."""
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    stop = preemption.StopRequest(DistEnv(rank=rank, world_size=2), every=4)
    stopped_at = None
    for step in range(1, 41):
        if rank == 1 and step == 5:
            stop.signal = signal.SIGUSR1
        if stop.due(step):
            stopped_at = step
            break
    stop.uninstall()
    agreed = stop.requested()
    with open(f"{results}.{rank}", "w") as f:
        json.dump({"stopped_at": stopped_at, "requested": agreed}, f)
    dist.destroy_process_group()


def test_ranks_stop_at_the_same_step(tmp_path):
    """The asynchronous check: every rank stops at the same step, soon after the signal."""
    results = tmp_path / "result"
    mp.spawn(_stop_step, args=(str(tmp_path / "store"), str(results)), nprocs=2)
    got = [json.loads((tmp_path / f"result.{r}").read_text()) for r in (0, 1)]
    # Checks at steps 4, 8, 12: the one at 8 sends rank 1's flag, the one at 12 reads it.
    assert got == [{"stopped_at": 12, "requested": True}] * 2
