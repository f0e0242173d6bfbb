"""How every job of the workflow runs this checkout's cvpipe, with or without a container.

The workflow's jobs run `python -m cvpipe <stage>`. Which `cvpipe` that imports must be the code
the workflow fingerprinted (`cvpipe.stagecode`): the `src/` of the checkout holding the Snakefile,
not a copy installed in a venv, a conda env or a container image. So the Snakefile gives every
shell command a prefix that puts `src/` first on `PYTHONPATH`. The prefix runs inside the
container (Snakemake wraps prefix and command together in `apptainer exec ... bash -c`), so it
holds whatever environment the image defines; the image provides Python, CUDA, PyTorch and the
other pinned libraries.

Under Apptainer the checkout must also be visible inside the container: Snakemake mounts the
working directory (as home) and the profile binds /tmp; `apptainer_binds` adds the checkout
when it lies elsewhere, read-only, through `APPTAINER_BIND` (which apptainer reads from the
environment Snakemake starts it with).

Imported by the Snakefile at parse time: standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from pathlib import Path

BUILD_HINT = (
    "build the image from this checkout instead: `make sif` (needs Apptainer only), then run "
    "with `--config container=cvpipe.sif`; or `make container` (Docker/Podman) and push it to a "
    "registry you name in the config key `container`. See containers/README.md."
)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def shell_prefix(src: str | os.PathLike[str], container: str | None) -> str:
    """The shell text run before each job's command (Snakemake's `shell.prefix`).

    `container` is the image URI when jobs run in it (recorded in provenance), else None.
    Braces are doubled: Snakemake formats the prefix like a rule's shell command.
    """
    src_word = shlex.quote(str(Path(src).resolve())).replace("{", "{{").replace("}", "}}")
    words = [
        "set -euo pipefail;",
        f'export PYTHONPATH={src_word}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}";',
    ]
    if container:
        image = shlex.quote(container).replace("{", "{{").replace("}", "}}")
        words.append(f"export CVPIPE_CONTAINER={image};")
    return " ".join(words) + " "


def apptainer_binds(
    repo: str | os.PathLike[str], workdir: str | os.PathLike[str], existing: str = ""
) -> str:
    """`APPTAINER_BIND` value that makes the checkout visible in the container.

    Nothing is added when the working directory (mounted by Snakemake) holds the checkout. A
    checkout outside it is bound read-only, whole, so `git` can tell the commit inside the job;
    when the working directory lies inside the checkout only `src/` is bound, so that the
    read-only bind never covers the working directory.
    """
    repo, workdir = Path(repo).resolve(), Path(workdir).resolve()
    if _inside(repo, workdir):
        return existing
    target = repo / "src" if _inside(workdir, repo) else repo
    bind = f"{target}:{target}:ro"
    return f"{existing},{bind}" if existing else bind


def image_hint(uri: str, image_dir: str | os.PathLike[str]) -> str | None:
    """A sentence for the user before Snakemake fetches or opens the image, or None if it is
    already there: where to get an image when `uri` cannot be pulled or does not exist.

    Snakemake caches pulled images as `<image_dir>/<md5 of the URI>.simg`
    (snakemake.deployment.singularity); only an image not cached yet is about to be pulled.
    """
    if "://" not in uri:
        if Path(uri).exists():
            return None
        return f"cvpipe: the container image {uri} does not exist; {BUILD_HINT}"
    cached = Path(image_dir) / f"{hashlib.md5(uri.encode()).hexdigest()}.simg"
    if cached.exists():
        return None
    return (
        f"cvpipe: the container image {uri} is not in {image_dir} yet, so Snakemake pulls it "
        f"now. If that pull fails (no image published under that name yet, or no access), "
        f"{BUILD_HINT}"
    )


def prepare_apptainer(uri: str, image_dir: str | None, repo: str | os.PathLike[str]) -> None:
    """Before Snakemake starts Apptainer: say how to build the image if it is not there yet,
    and bind the checkout (`APPTAINER_BIND`, read by apptainer from the environment Snakemake
    starts it with; `SINGULARITY_BIND` for Singularity)."""
    hint = image_hint(uri, image_dir or ".snakemake/singularity")
    if hint:
        print(hint, file=sys.stderr)
    for variable in ("APPTAINER_BIND", "SINGULARITY_BIND"):
        os.environ[variable] = apptainer_binds(repo, os.getcwd(), os.environ.get(variable, ""))
