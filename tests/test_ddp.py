"""DDP on the CPU with real torchrun (gloo): same global batch as one process, one set of
outputs, checkpoints that move between 1 and 2 processes, and a failing rank ends the job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    BIN,
    CONFIGS,
    assert_ddp_step_equals_single_process_step,
    kill_tree,
    process_tree,
    snakemake,
    tool_env,
)

pytestmark = pytest.mark.slow

TINY = {"model": "resnet18", "image_size": 32, "batch_size": 8, "warmup_epochs": 0.5, "epochs": 4}


def history(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_ddp_step_equals_single_process_step(tiny_cache, tmp_path):
    """The real sampler, train step and validation under torchrun: 2 processes on halves of
    each global batch end exactly where 1 process on the whole batch does."""
    assert_ddp_step_equals_single_process_step(tiny_cache / "cache", tmp_path, "cpu")


def test_two_processes_train_like_one(tmp_path):
    """The workflow's DDP path: same global batch, one set of outputs, similar result."""
    overlay = tmp_path / "ddp.yaml"
    overlay.write_text(
        "train:\n  epochs: 6\n  batch_size: 16\n"
        "  augment: {hflip: false, vflip: false, rot90: false}\n"
        "experiments:\n  single: {}\n  ddp2:\n    ddp_processes: 2\n"
    )
    targets = [
        f"results/{e}/{f}"
        for e in ("single", "ddp2")
        for f in ("provenance.json", "train/history.csv")
    ]
    snakemake(tmp_path, *targets, configfiles=[*CONFIGS, overlay])

    ddp = tmp_path / "results" / "ddp2"
    training = json.loads((ddp / "provenance.json").read_text())["training"]
    assert (training["world_size"], training["global_batch"], training["per_process_batch"]) == (
        2,
        16,
        8,
    )
    rows = {
        name: history(tmp_path / "results" / name / "train" / "history.csv")
        for name in ("single", "ddp2")
    }
    assert rows["single"][-1]["lr"] == rows["ddp2"][-1]["lr"]  # same steps, same schedule
    # One set of outputs, written once (by rank 0): a row per epoch, one event file, one model.
    assert [int(r["epoch"]) for r in rows["ddp2"]] == [1, 2, 3, 4, 5, 6]
    assert len(list((ddp / "train" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (ddp / "train").iterdir()) == [
        "checkpoints", "history.csv", "model.pt", "tensorboard",
    ]  # fmt: skip
    # Tolerance: the two runs differ in BatchNorm statistics (8 vs 16 images per batch), so they
    # drift apart like two seeds do; on 16 val images, final accuracy within 0.25 (4 images)
    # and val loss within 0.5.
    single, two = rows["single"][-1], rows["ddp2"][-1]
    assert abs(float(single["val_acc"]) - float(two["val_acc"])) <= 0.25
    assert abs(float(single["val_loss"]) - float(two["val_loss"])) <= 0.5


def train_command(processes: int, cache: Path, out: Path) -> list[str]:
    config = json.dumps({**TINY, "ddp_processes": processes})
    launcher = [str(BIN / "cvpipe")]
    if processes > 1:
        launcher = [
            str(BIN / "torchrun"),
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "cvpipe",
        ]
    paths = [
        "--cache-dir",
        str(cache),
        "--model",
        str(out / "model.pt"),
        "--history",
        str(out / "history.csv"),
        "--provenance",
        str(out / "provenance.json"),
    ]
    return [*launcher, "train", "--config", config, *paths, "--threads", "2", "--cache-scratch", ""]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_after_first_checkpoint(cmd: list[str], out: Path) -> int:
    """Start a training; once epoch 1 is checkpointed, SIGKILL the launcher alone (as the OOM
    killer might) and check that no worker trains on as an orphan."""
    proc = subprocess.Popen(
        cmd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    workers = process_tree(proc.pid)[1:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 10
    while any(alive(w) for w in workers):
        assert time.time() < deadline, "torchrun workers outlived their launcher"
        time.sleep(0.05)
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert epoch < TINY["epochs"] - 1, "the training finished before it could be interrupted"
    return epoch


@pytest.mark.parametrize(
    ("first", "then"), [(2, 1), (1, 2)], ids=["ddp-to-single", "single-to-ddp"]
)
def test_checkpoint_resumes_across_process_counts(tiny_cache, tmp_path, first, then):
    out = tmp_path / "run"
    done = kill_after_first_checkpoint(train_command(first, tiny_cache / "cache", out), out)
    resumed = subprocess.run(
        train_command(then, tiny_cache / "cache", out),
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"resuming from {out / 'checkpoints' / 'last.pt'} (completed epoch {done + 1} of 4)"
        in resumed.stderr
    )
    assert [int(r["epoch"]) for r in history(out / "history.csv")] == [1, 2, 3, 4]
    assert (
        torch.load(out / "model.pt", weights_only=True)["model"].keys()
        == torch.load(out / "checkpoints" / "best.pt", weights_only=True)["model"].keys()
    )
    assert not any(
        k.startswith("module.") for k in torch.load(out / "model.pt", weights_only=True)["model"]
    )


def _rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers under `launcher`."""
    ranks = {}
    for pid in process_tree(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(kv.split(b"=", 1) for kv in environ if b"=" in kv)
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            ranks[int(env[b"RANK"])] = pid
    return ranks


def test_a_failing_rank_ends_the_job_with_its_error(tiny_cache, tmp_path):
    out = tmp_path / "run"
    config = json.dumps({**TINY, "epochs": 50, "ddp_processes": 2})
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "cvpipe"]
    paths = [
        "--cache-dir",
        str(tiny_cache / "cache"),
        "--model",
        str(out / "model.pt"),
        "--history",
        str(out / "h.csv"),
        "--provenance",
        str(out / "provenance.json"),
    ]
    cmd = [*torchrun, "train", "--config", config, *paths, "--threads", "1", "--cache-scratch", ""]
    proc = subprocess.Popen(
        cmd,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        ranks = _rank_pids(proc.pid)
        assert set(ranks) == {0, 1}
        os.kill(ranks[1], signal.SIGKILL)  # rank 1 dies mid-training; rank 0 waits in a collective
        started = time.time()
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert time.time() - started < 60, "the job hung after a rank died"
        assert "rank      : 1" in output or "rank: 1" in output
        assert "Signal 9 (SIGKILL)" in output
    finally:
        kill_tree(proc.pid)
