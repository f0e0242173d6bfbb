"""GPU ids for concurrent jobs: distinct ids under real snakemake, freed when a job is killed."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time

import pytest
from helpers import BIN, CONFIGS, snakemake

GPU_JOBS = {"g1a": 1, "g1b": 1, "g2a": 2, "g1c": 1, "g2b": 2, "g1d": 1}


def gpus_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "cvpipe"), "gpus", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_concurrent_snakemake_jobs_never_share_a_gpu(tmp_path, monkeypatch):
    overlay = tmp_path / "gpus.yaml"
    experiments = "".join(f"  {name}:\n    gpus: {n}\n" for name, n in GPU_JOBS.items())
    overlay.write_text(f"train:\n  epochs: 1\n  image_size: 24\nexperiments:\n{experiments}")
    # A machine with 4 GPUs as far as the allocator knows; the training itself runs on CPU.
    monkeypatch.setenv("CVPIPE_GPU_COUNT", "4")
    monkeypatch.setenv("CVPIPE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    targets = [f"results/{name}/provenance.json" for name in GPU_JOBS]
    snakemake(
        tmp_path, *targets, "--resources", "gpu=4", "--set-threads", "train=1",
        configfiles=[*CONFIGS, overlay], cores=4,
    )  # fmt: skip

    jobs = {}
    for name, wanted in GPU_JOBS.items():
        training = json.loads((tmp_path / "results" / name / "provenance.json").read_text())[
            "training"
        ]
        ids = training["cuda_visible_devices"].split(",")
        assert len(ids) == wanted and set(ids) <= {"0", "1", "2", "3"}
        assert training["world_size"] == wanted  # gpus: 2 ran two DDP processes
        jobs[name] = (set(ids), training["started_unix"], training["finished_unix"])
    overlapping = 0
    for (a, (ids_a, start_a, end_a)), (b, (ids_b, start_b, end_b)) in itertools.combinations(
        jobs.items(), 2
    ):
        if start_a < end_b and start_b < end_a:
            overlapping += 1
            assert not ids_a & ids_b, f"{a} and {b} ran at the same time on GPU(s) {ids_a & ids_b}"
    assert overlapping > 0, "no two jobs ran at the same time: the test exercised nothing"


def gpu_intervals(results, name: str) -> list[tuple[str, set[str], float, float]]:
    """(job, GPU ids it was given, start, finish) of an experiment's train and evaluate jobs."""
    training = json.loads((results / name / "provenance.json").read_text())["training"]
    timing = json.loads((results / name / "eval" / "timing.json").read_text())
    return [
        (f"{stage} {name}", set((record["cuda_visible_devices"] or "").split(",")), *times)
        for stage, record in (("train", training), ("evaluate", timing))
        for times in [(record["started_unix"], record["finished_unix"])]
    ]


@pytest.mark.slow
def test_evaluate_runs_on_a_locked_gpu_id_and_cpu_experiments_on_the_cpu(tmp_path, monkeypatch):
    overlay = tmp_path / "gpus.yaml"
    overlay.write_text(
        "train:\n  epochs: 1\n  image_size: 24\n"
        "experiments:\n  ga:\n    gpus: 1\n  gb:\n    gpus: 1\n  gc:\n    gpus: 1\n"
        "  cpu:\n    gpus: 0\n"
    )
    # 2 GPUs as far as the allocator knows; without CUDA, `--device cuda` falls back to the CPU.
    monkeypatch.setenv("CVPIPE_GPU_COUNT", "2")
    monkeypatch.setenv("CVPIPE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    run = ["--resources", "gpu=2", "--set-threads", "train=1", "evaluate=1"]
    configs = [*CONFIGS, overlay]
    # Training first, so that the evaluations are all ready at once and compete for the 2 ids.
    trained = [f"results/{name}/provenance.json" for name in ("ga", "gb", "gc", "cpu")]
    snakemake(tmp_path, *trained, *run, configfiles=configs, cores=4)
    targets = [f"results/{name}/eval/timing.json" for name in ("ga", "gb", "gc", "cpu")]
    proc = snakemake(tmp_path, *targets, *run, "--printshellcmds", configfiles=configs, cores=4)
    results = tmp_path / "results"
    jobs = [job for name in ("ga", "gb", "gc") for job in gpu_intervals(results, name)]
    for job, ids, _, _ in jobs:
        assert len(ids) == 1 and ids <= {"0", "1"}, f"{job} ran on GPU ids {ids}"
    overlapping = []
    for (a, ids_a, start_a, end_a), (b, ids_b, start_b, end_b) in itertools.combinations(jobs, 2):
        if start_a < end_b and start_b < end_a:
            overlapping.append((a, b))
            assert not ids_a & ids_b, f"{a} and {b} ran at the same time on GPU {ids_a & ids_b}"
    assert any(a.startswith("evaluate") and b.startswith("evaluate") for a, b in overlapping), (
        f"no two evaluations ran at the same time: the test exercised nothing ({overlapping})"
    )
    for name in ("ga", "gb", "gc"):
        log = (results / "logs" / "evaluate" / f"{name}.log").read_text()
        assert "device cuda asked for, but no CUDA device is visible" in log  # warned, not crashed

    # The CPU experiment's evaluation is told so, and was not given (or shown) any GPU.
    shell = proc.stdout + proc.stderr
    (cpu_command,) = [line for line in shell.splitlines() if "--metrics results/cpu/" in line]
    assert "python -m cvpipe evaluate --device cpu " in cpu_command
    assert "cvpipe gpus" not in cpu_command
    timing = json.loads((results / "cpu" / "eval" / "timing.json").read_text())
    assert timing["device"] == "cpu" and timing["cuda_visible_devices"] is None
    gpu_commands = [line for line in shell.splitlines() if "--metrics results/g" in line]
    assert len(gpu_commands) == 3
    for command in gpu_commands:
        assert "cvpipe gpus --count 1 -- python -m cvpipe evaluate --device cuda " in command


def test_killed_job_frees_its_ids(tmp_path):
    env = {"CVPIPE_GPU_COUNT": "4", "CVPIPE_GPU_LOCK_DIR": str(tmp_path)}
    holder = gpus_cli("--count", "3", "--", "sleep", "60", env=env)
    try:
        deadline = time.time() + 30
        while len(list(tmp_path.glob("gpu-*.lock"))) < 3:  # lock files appear as ids are taken
            assert holder.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        # While it runs, only one id is left.
        blocked = gpus_cli("--count", "2", "--timeout", "1", "--", "true", env=env)
        assert blocked.wait(timeout=30) == 1
        assert "no 2 free GPU(s)" in blocked.stderr.read()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        after = gpus_cli(
            "--count",
            "4",
            "--timeout",
            "5",
            "--",
            "sh",
            "-c",
            "echo $CUDA_VISIBLE_DEVICES",
            env=env,
        )
        assert after.wait(timeout=30) == 0
        assert after.stdout.read().strip() == "0,1,2,3"
    finally:
        holder.kill()


def test_preset_visible_devices_are_the_only_candidates(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "3,5,7", "CVPIPE_GPU_LOCK_DIR": str(tmp_path)}
    first = gpus_cli(
        "--count", "2", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES; sleep 5", env=env
    )
    line = first.stdout.readline().strip()
    assert len(line.split(",")) == 2 and set(line.split(",")) <= {"3", "5", "7"}
    second = gpus_cli(
        "--count", "1", "--timeout", "3", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES", env=env
    )
    assert second.wait(timeout=30) == 0
    assert second.stdout.read().strip() == ({"3", "5", "7"} - set(line.split(","))).pop()
    first.kill()


def test_asking_for_more_gpus_than_exist_is_an_error(tmp_path):
    proc = gpus_cli("--count", "3", "--total", "2", "--lock-dir", str(tmp_path), "--", "true")
    assert proc.wait(timeout=30) == 1
    assert "needs 3 GPU(s) but only 2 exist here" in proc.stderr.read()
