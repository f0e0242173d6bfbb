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


DOCS = [REPO / "README.md", REPO / "containers" / "README.md"]


def commands(path) -> list[str]:
    """Shell commands in a Markdown file's code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    text = re.sub(r"\\\n\s*", " ", "\n".join(blocks))
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip()]


def test_documented_servers_are_not_open_to_the_network():
    """A user copies these: nothing may publish training logs or a notebook to every host."""
    servers = 0
    for doc in DOCS:
        for cmd in commands(doc):
            assert "--bind_all" not in cmd, cmd
            assert not re.search(r"token=(''|\"\"|\s|$)", cmd), cmd  # Jupyter keeps its token
            for port in re.findall(r"(?:^|\s)(?:-p|--publish)\s+(\S+)", cmd):
                assert port.startswith("127.0.0.1:"), f"{doc.name}: {cmd}"
            if cmd.startswith("apptainer exec") and re.search(r"\b(jupyter|tensorboard)\b", cmd):
                assert "127.0.0.1" in cmd, f"{doc.name}: {cmd}"  # host network: bind loopback
                servers += 1
            if cmd.startswith("docker run") and re.search(r"\b(jupyter|tensorboard)\b", cmd):
                assert "-p 127.0.0.1:" in cmd, f"{doc.name}: {cmd}"
                servers += 1
    assert servers >= 4, "the JupyterLab/TensorBoard examples are gone from the docs"


def test_documented_docker_runs_have_shared_memory_for_workers():
    for doc in DOCS:
        for cmd in commands(doc):
            if cmd.startswith("docker run") and "--gpus" in cmd:
                assert "--ipc=host" in cmd or "--shm-size" in cmd, f"{doc.name}: {cmd}"


def test_release_workflow_builds_checks_and_pushes_the_image_with_its_digest():
    import yaml

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "container.yml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
    steps = workflow["jobs"]["image"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    push = next(i for i, s in enumerate(steps) if s.get("with", {}).get("push"))
    health = next(i for i, n in enumerate(names) if "Health check" in n)
    assert health < push, "the image is pushed before its health check ran"
    assert "steps.push.outputs.digest" in str(workflow["jobs"]["image"]["outputs"])
    assert any(
        "containers/cvpipe.def" in str(s.get("run", ""))
        for s in workflow["jobs"]["apptainer"]["steps"]
    )


def test_make_builds_the_image_named_in_versions_yaml():
    import yaml

    image = yaml.safe_load((REPO / "envs" / "versions.yaml").read_text())["image"]
    for target, expected in (
        ("container", f"docker build -f containers/Dockerfile -t {image} ."),
        ("sif", "apptainer build cvpipe.sif containers/cvpipe.def"),
    ):
        proc = subprocess.run(
            ["make", "-n", target, "ENGINE=docker"], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 0 and expected in proc.stdout, proc.stdout + proc.stderr


def test_images_can_compile_at_run_time():
    """`compile: true` in the container: Triton builds a C helper per GPU and inductor C++
    kernels on the CPU at run time, which needs a C/C++ compiler and the Python headers."""
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)$", DOCKERFILE.read_text(), flags=re.M)[1]
    docker_runs = " ".join(a for n, a in instructions(DOCKERFILE.read_text()) if n == "RUN")
    definition = (REPO / "containers" / "cvpipe.def").read_text()
    for needed in ("gcc", "g++"):
        assert re.search(rf"\s{re.escape(needed)}\s", docker_runs), needed
        assert re.search(rf"\s{re.escape(needed)}\s", definition), needed
    assert '"python${PYTHON_VERSION}-dev"' in docker_runs
    assert f"python{python}-dev" in definition
