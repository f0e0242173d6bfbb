"""How jobs find the checkout's code: the shell prefix and the Apptainer binds (cvpipe.jobenv).

The workflow-level proof is tests/test_containers.py (a real run under --sdm apptainer); these
check the cases a real run there does not reach.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cvpipe.jobenv import apptainer_binds, image_hint, shell_prefix


def run_prefixed(prefix: str, env: dict[str, str]) -> str:
    # Snakemake formats the prefix like a shell command: doubled braces become single ones.
    text = prefix.replace("{{", "{").replace("}}", "}")
    proc = subprocess.run(
        ["bash", "-c", text + 'echo "$PYTHONPATH|${CVPIPE_CONTAINER:-}"'],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


def test_prefix_puts_the_checkout_first_and_names_the_container(tmp_path):
    src = tmp_path / "my repo" / "src"
    src.mkdir(parents=True)
    assert run_prefixed(shell_prefix(src, None), {"PATH": "/usr/bin:/bin"}) == f"{src}|"
    out = run_prefixed(
        shell_prefix(src, "docker://ghcr.io/x/y:1"), {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/img"}
    )
    assert out == f"{src}:/img|docker://ghcr.io/x/y:1"


@pytest.mark.parametrize(
    ("workdir", "expected"),
    [
        ("repo", ""),  # Snakemake mounts the working directory: nothing to add
        ("elsewhere", "{repo}:{repo}:ro"),  # the whole checkout, read-only (git works inside)
        ("repo/runs/a", "{repo}/src:{repo}/src:ro"),  # never a read-only bind over the workdir
        (".", ""),  # the checkout lies inside the working directory
    ],
)
def test_apptainer_binds(tmp_path: Path, workdir: str, expected: str):
    repo = tmp_path / "repo"
    (tmp_path / workdir).mkdir(parents=True, exist_ok=True)
    repo.mkdir(exist_ok=True)
    assert apptainer_binds(repo, tmp_path / workdir) == expected.format(repo=repo)
    kept = apptainer_binds(repo, tmp_path / workdir, "/data:/data")
    assert kept == ",".join(filter(None, ["/data:/data", expected.format(repo=repo)]))


def test_image_hint_only_when_the_image_is_missing(tmp_path):
    uri = "docker://ghcr.io/cvpipe/cvpipe:0.1.0"
    hint = image_hint(uri, tmp_path)
    assert hint and uri in hint and "make sif" in hint
    import hashlib

    (tmp_path / f"{hashlib.md5(uri.encode()).hexdigest()}.simg").touch()  # Snakemake's cache
    assert image_hint(uri, tmp_path) is None
    assert "make sif" in image_hint(str(tmp_path / "cvpipe.sif"), tmp_path)
    (tmp_path / "cvpipe.sif").touch()
    assert image_hint(str(tmp_path / "cvpipe.sif"), tmp_path) is None
