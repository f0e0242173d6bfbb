"""Stopping on SIGUSR1/SIGTERM: checkpoint the exact position (mid-epoch too), exit 75, and
resume to the same model an uninterrupted run ends with."""

from __future__ import annotations

import csv
import json
import os
import re
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
    paths += ["--provenance", str(tmp_path / "provenance.json")]
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
        "--cache-scratch",
        "",
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


@pytest.fixture(scope="module")
def longer_cache(tmp_path_factory):
    """80 images per class: 40 DDP steps per epoch at batch 4, so the ranks (which compare stop
    flags every 10 steps) surely stop mid-epoch."""
    from cvpipe.index import write_index
    from cvpipe.preprocess import preprocess
    from cvpipe.synth import make_dataset

    work = tmp_path_factory.mktemp("longer_cache")
    make_dataset(work / "data", images_per_class=80, size=40, seed=0)
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    write_index(work / "data", work / "manifest.csv", work / "bad.csv", split, seed=0)
    preprocess(work / "manifest.csv", work / "data", work / "cache", size=32)
    return work / "cache"


@pytest.mark.slow
def test_sigusr1_to_torchrun_under_the_relay_checkpoints_the_workers(longer_cache, tmp_path):
    """profiles/slurm/multinode.sbatch's launch line (relay + torchrun, 2 gloo workers): SLURM
    signals the step's process group, i.e. the relay and torchrun but not the workers (sessions
    of their own). torchrun must survive, and the workers must checkpoint mid-epoch and exit 75."""
    settings = {**SETTINGS, "batch_size": 4, "ddp_processes": 2}  # 2 per process (BatchNorm)
    cmd = [
        str(BIN / "python"), "-m", "cvpipe.relay", "--",
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "cvpipe", "train",
        "--config", json.dumps(settings), "--cache-dir", str(longer_cache),
        "--model", str(tmp_path / "model.pt"), "--history", str(tmp_path / "history.csv"),
        "--provenance", str(tmp_path / "provenance.json"), "--threads", "1",
        "--cache-scratch", "",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    last = tmp_path / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists():  # epoch 1 done: the signal comes early in epoch 2
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and 0 < state["progress"]["batches"] < 40, state["progress"]
    assert "stopped by SIGUSR1 in epoch 2 after" in err, err[-3000:]
    # torchrun outlived the signal and reports how the workers ended: the first to leave with
    # 75 ("try again"); torchrun may SIGTERM the other as it leaves, but only after the barrier
    # that follows rank 0's checkpoint (so the checkpoint above is complete either way).
    codes = re.findall(r"exitcode\s+: (-?\d+) ", err)
    assert str(EXIT_PREEMPTED) in codes and set(codes) <= {str(EXIT_PREEMPTED), "-15"}, err[-3000:]
    assert proc.returncode != 0
