"""`cache_scratch`: training copies the cache to a node-local folder and trains from the copy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import BIN, snakemake, tool_env

from cvpipe import atomic, staging
from cvpipe.distributed import DistEnv
from cvpipe.errors import CvpipeError
from cvpipe.settings import TrainConfig
from cvpipe.train import train

TINY = {"model": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8, "warmup_epochs": 0.5}


def train_cli(cache: Path, out: Path, scratch: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "cvpipe"), "train", "--config", json.dumps(TINY), "--cache-dir", str(cache),
        "--model", str(out / "model.pt"), "--history", str(out / "history.csv"),
        "--provenance", str(out / "provenance.json"), "--threads", "2",
        "--cache-scratch", scratch,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**tool_env(), **env})
    assert done.returncode == 0, done.stderr
    return done


def test_training_from_the_scratch_copy_equals_training_from_results(tiny_cache, tmp_path):
    cache = tiny_cache / "cache"
    plain = train_cli(cache, tmp_path / "plain", "")
    assert "cache_scratch" not in plain.stderr
    # `$NODE_SCRATCH` as the rule passes it (quoted): expanded in the job.
    staged = train_cli(
        cache, tmp_path / "staged", "$NODE_SCRATCH/job", NODE_SCRATCH=str(tmp_path / "node")
    )
    (copy,) = (tmp_path / "node" / "job" / "cvpipe-cache").iterdir()
    assert copy.name.startswith("cache-")
    assert f"cache_scratch: training from {copy}, a copy of {cache} (7 file(s)" in staged.stderr
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in cache.iterdir())
    for path in copy.iterdir():
        assert path.read_bytes() == (cache / path.name).read_bytes()
    a = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "staged" / "model.pt", weights_only=True)
    for key in ("train_loss", "val_loss", "val_acc", "val_macro_f1"):
        assert a["val_metrics"][key] == b["val_metrics"][key], key
    for key, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][key], rtol=0, atol=0)


def test_a_second_job_reuses_the_copy_and_another_cache_gets_its_own(tiny_cache, tmp_path):
    cache = tiny_cache / "cache"
    first = staging.stage_cache(cache, str(tmp_path), DistEnv())
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert staging.stage_cache(cache, str(tmp_path), DistEnv()) == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes  # nothing copied
    other = tmp_path / "other" / "cache"
    other.mkdir(parents=True)
    for path in cache.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    (other / "stats.json").write_text((cache / "stats.json").read_text().replace("0", "1", 1))
    assert staging.stage_cache(other, str(tmp_path), DistEnv()) != first


def test_a_full_scratch_disk_is_one_clear_error_before_copying(tiny_cache, tmp_path, monkeypatch):
    # A full disk simulated as in test_hostile: the one function that asks the filesystem.
    monkeypatch.setattr(atomic, "free_bytes", lambda _path: 1000)
    out = tmp_path / "out"
    with pytest.raises(CvpipeError) as error:
        train(
            TrainConfig.from_dict(TINY), tiny_cache / "cache", out / "model.pt",
            out / "history.csv", cache_scratch=str(tmp_path / "node"),
        )  # fmt: skip
    message = str(error.value)
    assert message.startswith(f"cache_scratch: not enough disk space for {tmp_path / 'node'}")
    assert "1,000 bytes" in message and "set cache_scratch to another folder" in message
    assert not list((tmp_path / "node").rglob("*.npy"))
    assert not (out / "model.pt").exists()


def test_an_unset_variable_is_named(tiny_cache, monkeypatch):
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    with pytest.raises(CvpipeError, match=r"'\$SLURM_TMPDIR': a variable in it is not set"):
        staging.stage_cache(tiny_cache / "cache", "$SLURM_TMPDIR", DistEnv())


def test_under_ddp_one_rank_copies_and_every_rank_trains_from_the_copy(tiny_cache, tmp_path):
    out, node = tmp_path / "ddp", tmp_path / "node"
    cmd = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "cvpipe", "train",
        "--config", json.dumps({**TINY, "ddp_processes": 2}),
        "--cache-dir", str(tiny_cache / "cache"), "--model", str(out / "model.pt"),
        "--history", str(out / "history.csv"), "--provenance", str(out / "provenance.json"),
        "--threads", "1", "--cache-scratch", str(node),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=tool_env(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("cache_scratch: training from") == 1  # local rank 0 copied
    (copy,) = (node / "cvpipe-cache").iterdir()
    assert len(list(copy.iterdir())) == 7 and not list(copy.glob(".*"))  # no temp files left
    assert (out / "model.pt").exists()


def test_the_rule_passes_the_folder_quoted_for_the_job_to_expand(tmp_path):
    planned = snakemake(
        tmp_path, "--dry-run", "--printshellcmds", "results/resnet18/train/model.pt",
        "--config", "cache_scratch=$SLURM_TMPDIR/cvpipe",
    ).stdout  # fmt: skip
    assert "--cache-scratch '$SLURM_TMPDIR/cvpipe' >" in planned
    unset = snakemake(tmp_path, "--dry-run", "--printshellcmds", "results/resnet18/train/model.pt")
    assert "--cache-scratch '' >" in unset.stdout
