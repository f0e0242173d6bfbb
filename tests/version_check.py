"""Compare every pinned version in the project with envs/versions.yaml (the one source).

`disagreements(root)` lists, one line each, where a Dockerfile ARG/pin, the Apptainer
definition, the conda environment, the local lock, the package metadata or the default
container URI says something other than envs/versions.yaml. tests/test_versions.py runs it
on the repository and on a copy with one pin changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9_.-]*)==([0-9][0-9A-Za-z.+!-]*)")
# The local venv may run a newer torch inside the package's range (README: torch 2.14.1 is
# what the build machines carry on disk).
LOCAL_EXCEPTIONS = {"torch", "torchvision"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, str]:
    return {_norm(m.group(1)): m.group(2) for m in PIN.finditer(text)}


def _check_pins(
    where: str, pins: dict[str, str], truth: dict[str, str], allow_extra: bool = False
) -> list[str]:
    out = []
    for name, version in pins.items():
        if name not in truth:
            if not allow_extra:
                out.append(
                    f"{where}: pins {name}=={version}, which envs/versions.yaml does not list"
                )
        elif truth[name] != version:
            out.append(f"{where}: {name}=={version}, but envs/versions.yaml says {truth[name]}")
    return out


def disagreements(root: Path) -> list[str]:
    v = yaml.safe_load((root / "envs" / "versions.yaml").read_text())
    truth = {_norm(k): str(val) for k, val in v["packages"].items()}
    problems: list[str] = []

    docker = (root / "containers" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", docker, flags=re.M))
    froms = re.findall(r"^FROM (\S+)", docker, flags=re.M)
    if froms != [v["base_image"]]:
        problems.append(f"Dockerfile: FROM {froms}, but envs/versions.yaml says {v['base_image']}")
    expected_args = {
        "PYTHON_VERSION": v["python"], "TORCH_VERSION": truth["torch"],
        "TORCHVISION_VERSION": truth["torchvision"], "TORCH_INDEX": v["torch_index"],
    }  # fmt: skip
    for arg, want in expected_args.items():
        if args.get(arg) != want:
            problems.append(
                f"Dockerfile: ARG {arg}={args.get(arg)}, but envs/versions.yaml says {want}"
            )
    if f'io.cvpipe.cuda="{v["cuda"]}"' not in docker:
        problems.append(f"Dockerfile: label io.cvpipe.cuda is not {v['cuda']}")
    problems += _check_pins("Dockerfile", _pins(docker), truth)
    pinned = set(_pins(docker)) | {"torch", "torchvision"}
    problems += [f"Dockerfile: does not install {name}" for name in truth if name not in pinned]

    # The Apptainer definition builds the same stack from the same base (no published image
    # needed), so it repeats the Dockerfile's pins.
    definition = (root / "containers" / "cvpipe.def").read_text()
    image = re.search(r"^From: (\S+)$", definition, flags=re.M)
    if not image or image.group(1) != v["base_image"]:
        problems.append(f"cvpipe.def: From is not {v['base_image']}")
    problems += _check_pins("cvpipe.def", _pins(definition), truth)
    problems += [
        f"cvpipe.def: does not install {name}" for name in truth if name not in _pins(definition)
    ]
    if f"python{v['python']} " not in definition or f"--index-url {v['torch_index']}" not in (
        definition
    ):
        problems.append(f"cvpipe.def: not Python {v['python']} with torch from {v['torch_index']}")
    labels = dict(re.findall(r"^\s+io\.cvpipe\.(\w+) (\S+)$", definition, flags=re.M))
    for key, want in {
        "cuda": v["cuda"],
        "python": v["python"],
        "torch": truth["torch"],
        "torchvision": truth["torchvision"],
    }.items():
        if labels.get(key) != want:
            found = labels.get(key)
            problems.append(
                f"cvpipe.def: label io.cvpipe.{key}={found}, but envs/versions.yaml says {want}"
            )
    if f'startswith("{truth["torch"]}")' not in definition:
        problems.append(f"cvpipe.def: %test does not check torch {truth['torch']}")

    conda = yaml.safe_load((root / "envs" / "cvpipe.yaml").read_text())
    deps = conda["dependencies"]
    if f"python={v['python']}" not in deps:
        problems.append(f"envs/cvpipe.yaml: python is not {v['python']}")
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    problems += _check_pins("envs/cvpipe.yaml", _pins("\n".join(pip)), truth)
    if f"--extra-index-url {v['torch_index']}" not in pip:
        problems.append(f"envs/cvpipe.yaml: torch index is not {v['torch_index']}")

    local = _pins((root / "envs" / "requirements-local.txt").read_text())
    local = {k: val for k, val in local.items() if k not in LOCAL_EXCEPTIONS}
    problems += _check_pins("envs/requirements-local.txt", local, truth, allow_extra=True)

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    local_all = _pins((root / "envs" / "requirements-local.txt").read_text())
    for text in requirements:
        req = Requirement(text)
        name = _norm(req.name)
        if name in truth and not req.specifier.contains(Version(truth[name])):
            problems.append(f"pyproject.toml: {text} excludes the pinned {name}=={truth[name]}")
        if name in local_all and not req.specifier.contains(Version(local_all[name])):
            problems.append(
                f"pyproject.toml: {text} excludes the local venv's {name}=={local_all[name]}"
            )

    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    if config["container"] != f"docker://{v['image']}":
        problems.append(
            f"config/config.yaml: container is {config['container']}, not docker://{v['image']}"
        )
    if "ghcr.io/cvpipe/cvpipe:" in docker and v["image"] not in docker:
        problems.append(f"Dockerfile: the build command names another tag than {v['image']}")
    return problems
