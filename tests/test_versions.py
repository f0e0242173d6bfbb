"""One source of truth for versions, and the container's static promises (read, not run:
this machine has no Docker engine and no Apptainer)."""

import re
import shutil
import subprocess

from helpers import BIN, REPO
from version_check import disagreements

DOCKERFILE = REPO / "containers" / "Dockerfile"


def test_every_pin_agrees_with_versions_yaml():
    assert disagreements(REPO) == []


def test_changing_one_pin_is_caught(tmp_path):
    for part in ("containers", "envs", "config"):
        shutil.copytree(REPO / part, tmp_path / part)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    docker = tmp_path / "containers" / "Dockerfile"
    docker.write_text(docker.read_text().replace("matplotlib==3.11.2", "matplotlib==3.10.0"))
    conda = tmp_path / "envs" / "cvpipe.yaml"
    conda.write_text(conda.read_text().replace("torch==2.8.0", "torch==2.9.0"))
    assert disagreements(tmp_path) == [
        "Dockerfile: matplotlib==3.10.0, but envs/versions.yaml says 3.11.2",
        "envs/cvpipe.yaml: torch==2.9.0, but envs/versions.yaml says 2.8.0",
    ]


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(kept))
    return [
        (line.split()[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def test_container_runs_as_non_root_without_ssh_by_default():
    steps = instructions(DOCKERFILE.read_text())
    users = [args for name, args in steps if name == "USER"]
    assert users, "no USER instruction: the container would run as root"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))
    final_user = users[-1].split(":")[0].replace("${USER_UID}", args["USER_UID"])
    assert final_user not in ("root", "0")
    assert args["INSTALL_SSH"] == "false"
    runs = " ".join(a for n, a in steps if n == "RUN")
    # SSH only inside the build-argument branch, and nothing starts an SSH daemon.
    assert runs.count("openssh-server") == 1
    branch = r'if \[ "\$\{INSTALL_SSH\}" = "true" \]; then\s+apt-get install [-\w ]*openssh-server'
    assert re.search(branch, runs)
    assert not any("sshd" in a for n, a in steps if n in ("CMD", "ENTRYPOINT"))


def test_container_basics():
    text = DOCKERFILE.read_text()
    steps = instructions(text)
    env = " ".join(a for n, a in steps if n == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    health = [a for n, a in steps if n == "HEALTHCHECK"]
    assert health and "import torch" in health[0] and "torch.cuda.is_available()" in health[0]
    labels = " ".join(a for n, a in steps if n == "LABEL")
    for key in (
        "org.opencontainers.image.version",
        "io.cvpipe.cuda",
        "io.cvpipe.torch",
        "io.cvpipe.torchvision",
        "io.cvpipe.python",
    ):
        assert key in labels
    assert "jupyterlab==" in text and "tensorboard==" in text
