"""The workflow as the user types it with containers or conda, as dry runs.

Snakemake 9 stops even a dry run with --use-singularity / --sdm apptainer unless `apptainer`
answers `--version`, and with --sdm conda unless `conda` answers three queries; neither can be
installed here. The tests put the clearly named shims of tests/shims/ first on PATH (they log
every call and refuse anything but those queries), run the real snakemake on the real Snakefile,
and ask Snakemake's own API which container and conda environment each job would use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import BIN, CONFIGS, REPO, SNAKEFILE

SHIMS = Path(__file__).with_name("shims")
IMAGE = "docker://" + yaml.safe_load((REPO / "envs" / "versions.yaml").read_text())["image"]
RULES = {"synth", "index", "preprocess", "train", "evaluate", "plots", "compare"}


def shimmed_env(log: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{SHIMS}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        "SHIM_LOG": str(log),
    }


def dry_run(workdir: Path, *args: str) -> tuple[str, list[str]]:
    log = workdir / "shim.log"
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(SNAKEFILE),
        "-d",
        str(workdir),
        *args,
        "-n",
        "--configfile",
        *map(str, CONFIGS),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=shimmed_env(log))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.stdout + proc.stderr, calls


def job_stats(output: str) -> dict[str, int]:
    lines = output.splitlines()
    rows = [line.split() for line in lines[lines.index("Job stats:") + 3 :]]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit() and r[0] != "total"}


# Asks Snakemake's API for the DAG of a dry run and prints, per job, its container and conda env.
API_PROBE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (ConfigSettings, DeploymentSettings, OutputSettings,
    ResourceSettings)
from snakemake_interface_executor_plugins.settings import DeploymentMethod

snakefile, workdir, method, *configs = sys.argv[1:]
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=8, resources={"gpu": 4}),
        config_settings=ConfigSettings(configfiles=[Path(c) for c in configs]),
        deployment_settings=DeploymentSettings(deployment_method={DeploymentMethod.parse_choice(method)}),
        snakefile=Path(snakefile), workdir=Path(workdir))
    workflow.dag().execute_workflow(pseudo_executor="dryrun")
    def conda(job):
        spec = job.conda_env_spec
        return spec.file.get_path_or_uri(secret_free=True) if spec else None
    jobs = workflow._workflow.dag.jobs
    print(json.dumps([{"rule": j.rule.name, "container": j.container_img_url, "conda": conda(j)}
                      for j in jobs]))
"""


def jobs_via_api(workdir: Path, method: str, configs: list[Path]) -> list[dict]:
    log = workdir / "shim.log"
    cmd = [
        sys.executable,
        "-c",
        API_PROBE,
        str(SNAKEFILE),
        str(workdir),
        method,
        *map(str, configs),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=shimmed_env(log))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args", [["--use-singularity", "--cores", "8", "--resources", "gpu=4"], ["--sdm", "apptainer"]],
    ids=["use-singularity", "sdm-apptainer"],
)  # fmt: skip
def test_container_dry_run_lists_every_job_in_the_image(tmp_path, args):
    output, calls = dry_run(tmp_path, *args)
    assert set(job_stats(output)) >= RULES
    assert calls and set(calls) == {"apptainer --version"}  # asked for its version, ran nothing
    jobs = jobs_via_api(tmp_path, "apptainer", CONFIGS)
    assert {j["rule"] for j in jobs} >= RULES
    assert {j["container"] for j in jobs if j["rule"] != "all"} == {IMAGE}


def test_local_sif_file_is_a_valid_container(tmp_path):
    overlay = tmp_path / "sif.yaml"
    overlay.write_text("container: cvpipe.sif\n")
    jobs = jobs_via_api(tmp_path, "apptainer", [*CONFIGS, overlay])
    assert {j["container"] for j in jobs if j["rule"] != "all"} == {"cvpipe.sif"}


def test_conda_dry_run_lists_the_environment(tmp_path):
    output, calls = dry_run(tmp_path, "--sdm", "conda")
    env_file = (REPO / "envs" / "cvpipe.yaml").resolve()
    assert any(
        line.startswith("Conda environment") and Path(line.split()[2]).resolve() == env_file
        for line in output.splitlines()
    ), output
    assert set(job_stats(output)) >= RULES
    assert all(c.split()[1] in ("--version", "info", "config") for c in calls)
    jobs = jobs_via_api(tmp_path, "conda", CONFIGS)
    assert {Path(j["conda"]).resolve() for j in jobs if j["rule"] != "all"} == {env_file}
