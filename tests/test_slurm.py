"""The workflow on a real SLURM cluster (one node on this machine) through
`snakemake --profile profiles/slurm`: every non-local rule a SLURM job, the same results as a
local run, a 2-GPU experiment as one job with one task, preemption by SIGUSR1, and a sweep
packed into few SLURM jobs by profiles/slurm-sweep.

Only the profile's SITE values are changed for the test cluster (partition, no account, GPU
type), plus settings that make a small cluster fast (latency, first status check, memory and
CPUs per GPU that fit one 8-CPU node)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, REPO, snakemake_command, tool_env
from slurm_cluster import GPU_TYPE, SlurmCluster, install_slurm, slurm_available

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
THREADS = ["--set-threads", "train=2", "evaluate=2"]  # as the local run (--cores 2) had them


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not slurm_available():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and cannot be installed here (CI installs it)")
        install_slurm()
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    settings = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    settings["default-resources"]["slurm_partition"] = "debug"  # SITE
    del settings["default-resources"]["slurm_account"]  # SITE: no accounting here
    settings["slurm-no-account"] = True
    settings["config"]["slurm_gpu_model"] = GPU_TYPE  # SITE
    settings["default-resources"]["mem_mb"] = 500
    settings["config"]["train_mem_mb_per_gpu"] = 750  # a 2-GPU training asks for 1500
    settings["set-resources"]["train"].update(cpus_per_gpu=2)
    settings["set-resources"]["evaluate"].update(cpus_per_gpu=2)
    settings["latency-wait"] = 5
    settings["slurm-init-seconds-before-status-checks"] = 2
    folder = tmp_path_factory.mktemp("profile")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return folder


def slurm_snakemake(workdir: Path, profile: Path, *args: str, overlays=()) -> list[str]:
    return [
        *snakemake_command(workdir, "--profile", str(profile), *args, *THREADS, "--verbose"),
        "--configfile", *map(str, CONFIGS), *map(str, overlays),
    ]  # fmt: skip


def rule_of(job: dict[str, str]) -> str:
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def of_job(rule: str, experiment: str, line: str) -> bool:
    """Whether a logged sbatch call is the job of `rule` for exactly `experiment`."""
    return re.search(rf"rule_{rule}_wildcards_{re.escape(experiment)}(?!\w)", line) is not None


def test_pipeline_runs_as_slurm_jobs_and_matches_a_local_run(cluster, profile, tiny_run, tmp_path):
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text("experiments:\n  gpu2:\n    gpus: 2\n")
    before = {j["JobId"] for j in cluster.jobs()}
    proc = subprocess.run(
        slurm_snakemake(tmp_path, profile, overlays=[overlay]),
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    jobs = [j for j in cluster.jobs() if j["JobId"] not in before]
    per_rule: dict[str, int] = {}
    for job in jobs:
        per_rule[rule_of(job)] = per_rule.get(rule_of(job), 0) + 1
        assert job["JobState"] == "COMPLETED", job
    # Every non-local rule ran as a SLURM job (Grad-CAM on a node's CPU); plots, model_card and
    # compare are local rules.
    assert per_rule == {
        "synth": 1, "index": 1, "preprocess": 2, "train": 3, "evaluate": 3, "gradcam": 3,
    }  # fmt: skip
    finished = cluster.jobcomp.read_text()
    assert all(f"JobId={j['JobId']} " in finished for j in jobs)
    for exp in ("resnet18", "resnet18_48px"):
        path = f"results/{exp}/eval/metrics.json"
        assert (tmp_path / path).read_bytes() == (tiny_run / path).read_bytes()
    assert (tmp_path / "results/comparison/comparison.html").exists()

    # The 2-GPU experiment: one job, one task, 2 GPUs of the configured type, CPUs per GPU,
    # memory and the pre-timeout signal, as the plugin logged its sbatch line.
    (sbatch,) = [
        line
        for line in proc.stdout.splitlines() + proc.stderr.splitlines()
        if "sbatch call:" in line and "rule_train_wildcards_gpu2" in line
    ]
    for flag in (
        f"--gpus={GPU_TYPE}:2",
        "--cpus-per-gpu=2",
        "--mem 1500",
        "--signal=USR1@120",
        "-t 720",
    ):
        assert flag in sbatch, sbatch
    assert "--ntasks-per-gpu" not in sbatch
    sbatch_lines = [
        line
        for line in proc.stdout.splitlines() + proc.stderr.splitlines()
        if "sbatch call:" in line
    ]
    # Memory grows with the GPUs: a CPU experiment's training asks for one GPU's worth.
    (cpu_train,) = [line for line in sbatch_lines if of_job("train", "resnet18", line)]
    assert "--mem 750" in cpu_train and "--gpus" not in cpu_train, cpu_train
    # The GPU experiment's evaluation asks SLURM for one GPU, the CPU experiment's for none.
    (gpu_eval,) = [line for line in sbatch_lines if of_job("evaluate", "gpu2", line)]
    assert f"--gpus={GPU_TYPE}:1" in gpu_eval and "--cpus-per-gpu=2" in gpu_eval, gpu_eval
    (cpu_eval,) = [line for line in sbatch_lines if of_job("evaluate", "resnet18", line)]
    assert "--gpus" not in cpu_eval, cpu_eval
    (gpu_job,) = [j for j in jobs if j["Comment"] == "rule_train_wildcards_gpu2"]
    assert gpu_job["NumTasks"] == "1"
    assert f"gpu:{GPU_TYPE}:2" in gpu_job["TresPerJob"]  # the job's GPU request, as SLURM saw it
    training = json.loads((tmp_path / "results/gpu2/provenance.json").read_text())["training"]
    assert training["world_size"] == 2  # torchrun inside the one task, one process per GPU
    assert training["cuda_visible_devices"] == "0,1"  # SLURM's allocation, honoured
    timing = json.loads((tmp_path / "results/gpu2/eval/timing.json").read_text())
    assert timing["cuda_visible_devices"] == "0"  # one of the GPUs SLURM gave the job


def test_sigusr1_checkpoints_and_the_retry_ends_like_an_uninterrupted_run(
    cluster, profile, tmp_path
):
    longer = tmp_path / "long.yaml"
    longer.write_text("train:\n  epochs: 6\n")
    target = "results/resnet18/eval/metrics.json"
    local = tmp_path / "local"
    configs = [*map(str, CONFIGS), str(longer)]
    cmd = [*snakemake_command(local, target, *THREADS), "--configfile", *configs]
    subprocess.run(cmd, check=True, capture_output=True, env=tool_env())

    work = tmp_path / "slurm"
    before = {j["JobId"] for j in cluster.jobs()}
    run = subprocess.Popen(
        slurm_snakemake(work, profile, target, overlays=[longer]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tool_env(),
    )  # fmt: skip
    last = work / "results/resnet18/train/checkpoints/last.pt"
    deadline = time.time() + 600
    while not last.exists():
        assert run.poll() is None and time.time() < deadline, "training never checkpointed"
        time.sleep(0.1)
    (job,) = [
        j
        for j in cluster.jobs()
        if j["JobId"] not in before and j["JobState"] == "RUNNING" and rule_of(j) == "train"
    ]
    subprocess.run(["scancel", "--signal=USR1", job["JobId"]], check=True)
    assert run.wait(timeout=900) == 0

    trains = [j for j in cluster.jobs() if j["JobId"] not in before and rule_of(j) == "train"]
    assert [j["JobState"] for j in trains] == ["FAILED", "COMPLETED"]  # stopped, then the retry
    log = (work / "results/logs/train/resnet18.log").read_text()
    assert "resuming from results/resnet18/train/checkpoints/last.pt" in log
    assert (work / target).read_bytes() == (local / target).read_bytes()


def test_a_sweep_packs_into_few_slurm_jobs_with_the_metrics_of_an_unpacked_run(
    cluster, profile, tmp_path
):
    """profiles/slurm-sweep: 8 tiny runs (2 learning rates x 4 seeds) on the user's own photo
    folder; trainings and evaluations 4 runs per SLURM job, Grad-CAM (asked for with
    sweep.extras) 4 per job."""
    from cvpipe.synth import make_dataset

    make_dataset(tmp_path / "photos", images_per_class=16, size=40, seed=0)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"data:\n  root: {tmp_path / 'photos'}\nexperiments: null\n"
        "sweep:\n  grid:\n    lr: [0.01, 0.02]\n  seeds: [0, 1, 2, 3]\n  extras: [gradcam]\n"
    )
    runs = [f"resnet18-lr{lr}-s{seed}" for lr in ("0.01", "0.02") for seed in range(4)]
    local = tmp_path / "local"
    cmd = [*snakemake_command(local, *THREADS), "--configfile", *map(str, CONFIGS), str(sweep)]
    subprocess.run(cmd, check=True, capture_output=True, env=tool_env())

    before = {j["JobId"] for j in cluster.jobs()}
    packing = ("--profile", str(REPO / "profiles" / "slurm-sweep"))
    proc = subprocess.run(
        slurm_snakemake(tmp_path / "slurm", profile, *packing, overlays=[sweep]),
        capture_output=True, text=True, env=tool_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    jobs = [j for j in cluster.jobs() if j["JobId"] not in before]
    assert all(j["JobState"] == "COMPLETED" for j in jobs), jobs
    # Every submission, from the plugin's log (scontrol forgets jobs after MinJobAge): 24 jobs
    # of 8 runs in 4 SLURM jobs (the plugin comments a group job rule_<group>_<rules>).
    logged = proc.stdout.splitlines() + proc.stderr.splitlines()
    comments = [re.search(r"--comment (\S+)", line) for line in logged if "sbatch call:" in line]
    per_rule: dict[str, int] = {}
    for found in comments:
        assert found is not None
        name = found.group(1).removeprefix("rule_").split("_wildcards_")[0]
        per_rule[name] = per_rule.get(name, 0) + 1
    assert per_rule == {
        "index": 1, "preprocess": 1, "run_evaluate_train": 2, "figures_gradcam": 2,
    }  # fmt: skip
    for run in runs:
        path = f"results/{run}/eval/metrics.json"
        assert (tmp_path / "slurm" / path).read_bytes() == (local / path).read_bytes(), run
    # The runs of a packed job run one after another: it asks for one run's memory and the sum
    # of the 4 runs' runtimes (training 720 + evaluation 60 minutes each).
    packed = [
        line
        for line in proc.stdout.splitlines() + proc.stderr.splitlines()
        if "sbatch call:" in line and "rule_run_evaluate_train" in line
    ]
    assert len(packed) == 2
    assert all("--mem 750 " in line and "-t 3120 " in line for line in packed), packed


def test_packing_waits_for_the_built_in_data_set(profile, tmp_path):
    """Grouping while the built-in set's checkpoint is still to run would submit jobs twice
    (snakemake#1628): the workflow stops first and says what to run."""
    packing = ("--profile", str(REPO / "profiles" / "slurm-sweep"))
    proc = subprocess.run(
        slurm_snakemake(tmp_path, profile, *packing, "--dry-run"),
        capture_output=True, text=True, env=tool_env(),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "snakemake --profile profiles/slurm data/surface-defects" in proc.stdout + proc.stderr


def test_multinode_example_runs_on_one_node_and_plans_two(cluster, tmp_path):
    """profiles/slurm/multinode.sbatch: a real run on this one-node cluster (srun + torchrun's
    c10d rendezvous, 2 processes), and the 2-node command it plans in DRY_RUN mode."""
    import shlex

    from cvpipe.config import experiment_config, load_configs

    script = REPO / "profiles" / "slurm" / "multinode.sbatch"
    config = load_configs(CONFIGS)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    cache = "results/dataset/cache/32px/stats.json"  # the experiment's data, made by the workflow
    subprocess.run(
        [*snakemake_command(tmp_path, cache), "--configfile", *map(str, CONFIGS)],
        check=True,
        capture_output=True,
        env=tool_env(),
    )

    # The script's own #SBATCH lines ask for 2 nodes x 4 GPUs; scaled to this cluster.
    scaled = ["--nodes=1", f"--gpus-per-node={GPU_TYPE}:2", "--cpus-per-task=2", "--mem=3000"]
    output = f"--output={tmp_path}/multinode.log"
    run = subprocess.run(
        ["sbatch", "--wait", *scaled, output, str(script), "resnet18"],
        cwd=tmp_path, capture_output=True, text=True, env=tool_env(),
    )  # fmt: skip
    log = (tmp_path / "multinode.log").read_text() if (tmp_path / "multinode.log").exists() else ""
    assert run.returncode == 0, run.stderr + log[-3000:]
    training = json.loads((tmp_path / "results/resnet18/provenance.json").read_text())["training"]
    assert training["world_size"] == 2 and training["cuda_visible_devices"] == "0,1"
    assert (tmp_path / "results/resnet18/train/model.pt").exists()

    env = {
        **tool_env(), "DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242", "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "32",
    }  # fmt: skip
    planned = subprocess.run(
        ["bash", str(script), "resnet18"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    words = shlex.split(planned.stdout)
    relay = ["python", "-m", "cvpipe.relay", "--"]  # SIGUSR1 to the workers, not torchrun
    assert words[:7] == ["srun", "--ntasks-per-node=1", *relay, "torchrun"]
    for word in (
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_id=4242",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu07:29500",
        "--threads",
    ):
        assert word in words
    assert json.loads(words[words.index("--config") + 1]) == experiment_config(config, "resnet18")
    assert words[words.index("--cache-dir") + 1] == "results/dataset/cache/32px"
