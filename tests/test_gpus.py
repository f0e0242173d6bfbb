"""GPU ids for concurrent jobs: distinct ids under real snakemake, freed when a job is killed."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

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


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to act as a second user"
)
def test_a_second_user_takes_ids_in_the_first_users_lock_folder():
    # Under /tmp, not tmp_path: pytest's folders are private (0700) to the user running it.
    shared = Path(tempfile.mkdtemp(prefix="cvpipe-gpu-users-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        locks = shared / "locks"
        env = {"CVPIPE_GPU_COUNT": "3", "CVPIPE_GPU_LOCK_DIR": str(locks)}
        # root, with the usual umask, makes the folder and the lock files of ids 0 and 1 ...
        first = gpus_cli("--count", "2", "--", "true", env=env, preexec_fn=lambda: os.umask(0o022))
        assert first.wait(timeout=60) == 0, first.stderr.read()
        assert stat.S_IMODE(locks.stat().st_mode) == 0o1777
        made = sorted(locks.glob("gpu-*.lock"))
        assert [p.name for p in made] == ["gpu-0.lock", "gpu-1.lock"]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 for p in made)
        # ... and id 2's file is a 0644 one, as an older cvpipe left them.
        (locks / "gpu-2.lock").touch(mode=0o644)
        os.chmod(locks / "gpu-2.lock", 0o644)
        # Another user then takes all three ids: opens root's files and makes none of their own.
        second = subprocess.run(
            [*NOBODY, str(BIN / "python"), "-m", "cvpipe", "gpus", "--count", "3", "--timeout",
             "10", "--", "sh", "-c", "id -u; echo $CUDA_VISIBLE_DEVICES"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert second.stdout.split() == ["65534", "0,1,2"]
        # A file nobody else may read is reported as such, not as a traceback.
        os.chmod(locks / "gpu-2.lock", 0o600)
        third = subprocess.run(
            [*NOBODY, str(BIN / "python"), "-m", "cvpipe", "gpus", "--count", "3", "--", "true"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert third.returncode == 1
        assert f"cannot open the GPU lock file {locks / 'gpu-2.lock'}" in third.stderr
        assert "Traceback" not in third.stderr
    finally:
        shutil.rmtree(shared)


def nvidia_smi_shim(folder: Path) -> Path:
    """A test stand-in for the driver query, not nvidia-smi: answers `--query-gpu=index,uuid`
    with the GPUs in $SHIM_GPUS ("index=uuid ..."), i.e. what one SLURM job's nvidia-smi shows."""
    shim = folder / "nvidia-smi"
    shim.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu=index,uuid) ;; *) exit 9 ;; esac\n'
        'for gpu in $SHIM_GPUS; do echo "${gpu%%=*}, ${gpu#*=}"; done\n'
    )
    shim.chmod(0o755)
    return folder


def test_slurm_jobs_wait_only_for_the_same_physical_gpu(tmp_path):
    (tmp_path / "bin").mkdir()
    shim = nvidia_smi_shim(tmp_path / "bin")
    locks = tmp_path / "locks"

    def job(uuid: str, *command: str) -> subprocess.Popen:
        """A SLURM job that sees one GPU as id 0: which physical one, the shim says."""
        env = {
            "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
            "SHIM_GPUS": f"0={uuid}",
            "CUDA_VISIBLE_DEVICES": "0",
            "CVPIPE_GPU_LOCK_DIR": str(locks),
        }
        return gpus_cli("--count", "1", *command, env=env)

    holder = job("GPU-aaaa", "--", "sleep", "60")
    try:
        deadline = time.time() + 30
        while not (locks / "gpu-GPU-aaaa.lock").exists():  # keyed by the UUID, not by "0"
            assert holder.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        other_gpu = job(
            "GPU-bbbb", "--timeout", "3", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"
        )
        assert other_gpu.wait(timeout=30) == 0, other_gpu.stderr.read()
        assert other_gpu.stdout.read().strip() == "0"  # the job's own numbering, unchanged
        same_gpu = job("GPU-aaaa", "--timeout", "1", "--", "true")
        assert same_gpu.wait(timeout=30) == 1
        assert "no 1 free GPU(s)" in same_gpu.stderr.read()
    finally:
        holder.kill()
        holder.wait()
