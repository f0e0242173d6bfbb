"""Helpers for running the real workflow with real snakemake in a temporary folder.

The workflow tests run `snakemake` from this venv on the repository's Snakefile, in a temporary
working directory, with config/config.yaml plus tests/configs/tiny.yaml (small images, few
epochs), so only the sizes differ from a user's run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIGS = [REPO / "config" / "config.yaml", REPO / "tests" / "configs" / "tiny.yaml"]
BIN = Path(sys.executable).parent
EXPERIMENTS = ("resnet18", "resnet18_48px")


def tool_env() -> dict[str, str]:
    """Environment whose PATH finds this venv's `snakemake` and `cvpipe` first."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake_command(
    workdir: Path, *args: str, cores: int = 2, snakefile: Path = SNAKEFILE
) -> list[str]:
    """`snakemake` on the repo's Snakefile (or a copy's) in `workdir`; add `--configfile` last
    (it takes several values, so targets after it would be read as config files)."""
    return [
        str(BIN / "snakemake"),
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--cores",
        str(cores),
        *args,
    ]


def snakemake(
    workdir: Path,
    *args: str,
    configfiles: list[Path] | None = None,
    check: bool = True,
    timeout: int = 900,
    cores: int = 2,
    snakefile: Path = SNAKEFILE,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real snakemake on the real Snakefile in `workdir`; output captured as text."""
    configs = [str(c) for c in (configfiles or CONFIGS)]
    cmd = [*snakemake_command(workdir, *args, cores=cores, snakefile=snakefile)]
    cmd += ["--configfile", *configs]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env or tool_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def planned_jobs(
    workdir: Path,
    *args: str,
    configfiles: list[Path] | None = None,
    snakefile: Path = SNAKEFILE,
) -> dict[str, int]:
    """Rule -> number of jobs a dry run would execute (empty if nothing to do)."""
    out = snakemake(
        workdir,
        "--dry-run",
        "--quiet",
        "rules",
        *args,
        configfiles=configfiles,
        snakefile=snakefile,
    ).stdout
    jobs: dict[str, int] = {}
    lines = out.splitlines()
    if "Job stats:" not in lines:
        return jobs
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total" or not parts[1].isdigit():
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def copy_repo(dst: Path) -> Path:
    """A copy of this checkout's files (tracked, and untracked but not ignored): a repository a
    test may edit. Not a git repository; the copy's Snakefile runs the copy's src/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
    return dst


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a finished workflow directory (outputs, data, .snakemake metadata; mtimes kept)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (torchrun's workers live in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def kill_tree(root: int) -> None:
    """SIGKILL `root` and every descendant (like a scheduler killing a job's cgroup)."""
    for pid in process_tree(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def assert_ddp_step_equals_single_process_step(cache: Path, out: Path, device: str) -> None:
    """`ddp_step.py` alone and under 2-process torchrun on `device` (gloo on the CPU, NCCL on
    CUDA): the same weights, and every rank reports the single process's metrics."""
    script = Path(__file__).with_name("ddp_step.py")
    one = subprocess.run(
        [str(BIN / "python"), str(script), str(cache), str(out / "one"), device],
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, str(script), str(cache), str(out / "two"), device],
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr
    a = torch.load(out / "one" / "model.pt", weights_only=True)
    b = torch.load(out / "two" / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    single = json.loads((out / "one" / "metrics-rank0.json").read_text())
    ranks = [json.loads((out / "two" / f"metrics-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank sees the same (reduced) numbers
    for part in ("train", "val"):
        for key, value in single[part].items():
            assert ranks[0][part][key] == pytest.approx(value, abs=1e-5), (part, key)
