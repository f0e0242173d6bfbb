"""DVC versions the data and the results, and reruns follow content: real git and real dvc in
temporary repositories, real snakemake on the project's Snakefile (tiny config)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import pytest
import yaml
from helpers import BIN, REPO, tool_env

from cvpipe.config import deep_merge
from cvpipe.index import read_manifest

pytestmark = pytest.mark.slow
EXPERIMENTS = ("resnet18", "resnet18_48px")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "cvpipe tests", "GIT_AUTHOR_EMAIL": "tests@cvpipe.invalid",
    "GIT_COMMITTER_NAME": "cvpipe tests", "GIT_COMMITTER_EMAIL": "tests@cvpipe.invalid",
}  # fmt: skip


def sh(cwd: Path, *cmd: str) -> str:
    """Run git, or dvc/snakemake from this venv, in `cwd`; fail with its output if it fails."""
    exe = cmd[0] if cmd[0] == "git" else str(BIN / cmd[0])
    proc = subprocess.run(
        [exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True, env={**tool_env(), **GIT_ENV}
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def planned(cwd: Path) -> dict[str, int]:
    out = sh(cwd, "snakemake", "--dry-run", "--quiet", "rules")
    lines = out.splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in out, out
        return {}
    rows = [line.split() for line in lines[lines.index("Job stats:") + 3 :]]
    return {
        r[0]: int(r[1])
        for r in rows
        if len(r) == 2 and r[1].isdigit() and r[0] not in ("total", "all")
    }


def digests(root: Path, *parts: str) -> dict[str, str]:
    """sha256 of every file below the given parts of `root`."""
    out = {}
    for part in parts:
        for path in sorted((root / part).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def figures(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "results").glob("*/plots/*.png"))
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's cvpipe project after a first run: data and results versioned and pushed."""
    root = tmp_path_factory.mktemp("dvc")
    repo = root / "cvpipe"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    config = deep_merge(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
        yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text()),
    )
    (repo / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "cvpipe project")
    sh(repo, "snakemake")  # draws the built-in data and runs everything
    sh(repo, "dvc", "add", "data/surface-defects")
    sh(repo, "dvc", "repro")  # records results and Snakemake's metadata; nothing left to run
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "data and results")
    sh(repo, "dvc", "push")
    return repo


def fresh_clone(project: Path, name: str) -> Path:
    clone = project.parent / name
    sh(project.parent, "git", "clone", "-q", str(project), name)
    sh(clone, "dvc", "pull")
    return clone


def test_default_remote_is_a_local_folder(project):
    assert "Cache and remote 'local' are in sync" in sh(project, "dvc", "status", "--cloud")
    storage = project.parent / "cvpipe-dvc-storage"
    assert storage.is_dir() and any(storage.rglob("*.dir"))


def test_fresh_clone_after_pull_has_nothing_to_do(project):
    clone = fresh_clone(project, "clone-fresh")
    # Every restored file has a new mtime; nothing may rerun, least of all training.
    assert planned(clone) == {}
    assert "up to date" in sh(clone, "dvc", "status")
    for exp in EXPERIMENTS:  # the versioned results, not the scratch (.dvcignore)
        for name in ("train/model.pt", "train/history.csv", "eval/metrics.json"):
            path = f"results/{exp}/{name}"
            assert (clone / path).read_bytes() == (project / path).read_bytes()
    assert not (clone / "results/resnet18/train/checkpoints").exists()


def test_touched_images_rerun_nothing(project):
    clone = fresh_clone(project, "clone-touch")
    later = time.time() + 3600
    for path in (clone / "data" / "surface-defects").rglob("*.png"):
        os.utime(path, (later, later))
    assert planned(clone) == {}


def test_remote_round_trip_is_byte_identical(project):
    clone = fresh_clone(project, "clone-remote")
    sh(clone, "dvc", "push")
    tracked = ("data/surface-defects", "results", ".snakemake/metadata")
    before = digests(clone, *tracked)
    assert any(name.endswith("model.pt") for name in before) and any("data/" in n for n in before)
    for part in (".dvc/cache", *tracked):
        shutil.rmtree(clone / part)
    sh(clone, "dvc", "pull")
    assert digests(clone, *tracked) == before


def test_changed_image_reruns_its_chain_and_shows_in_metrics_diff(project):
    clone = fresh_clone(project, "clone-change")
    old_figures = figures(clone)
    train_image = next(
        r["path"]
        for r in read_manifest(clone / "results/dataset/manifest.csv")
        if r["split"] == "train"
    )
    path = clone / "data" / "surface-defects" / train_image
    image = cv2.imread(str(path))
    image[4:20, 4:20] = 255 - image[4:20, 4:20]
    cv2.imwrite(str(path), image)
    sh(clone, "dvc", "add", "data/surface-defects")
    sh(clone, "git", "commit", "-qam", "fix one image")

    assert planned(clone) == {
        "index": 1,
        "preprocess": 2,
        "train": 2,
        "evaluate": 2,
        "plots": 2,
        "gradcam": 2,
        "compare": 1,
        "model_card": 2,
    }
    sh(clone, "dvc", "repro")  # runs the workflow (the data changed), then records the results
    sh(clone, "git", "commit", "-qam", "retrain on the fixed data")
    assert planned(clone) == {}
    new_figures = figures(clone)
    for exp in EXPERIMENTS:
        assert (
            new_figures[f"results/{exp}/plots/curves.png"]
            != old_figures[f"results/{exp}/plots/curves.png"]
        )

    diff = json.loads(sh(clone, "dvc", "metrics", "diff", "HEAD~1", "--json"))
    changes = diff["results/comparison/metrics.json"]
    current = json.loads((clone / "results/comparison/metrics.json").read_text())
    for exp in EXPERIMENTS:
        entry = changes[f"{exp}.log_loss"]
        assert entry["new"] == pytest.approx(current[exp]["log_loss"])
        assert entry["diff"] != 0

    # The README's recipe: a revision's figures from git + DVC, nothing recomputed.
    sh(clone, "git", "checkout", "-q", "HEAD~2")
    sh(clone, "dvc", "checkout")
    assert planned(clone) == {}
    assert figures(clone) == old_figures
