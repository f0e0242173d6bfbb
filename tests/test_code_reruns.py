"""Code changes rerun exactly what they affect: real snakemake on a copy of the repository.

Each test copies the checkout (the copy's Snakefile fingerprints and runs the copy's src/),
copies a finished tiny run, edits one file of the copy and asks a dry run what it would do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_repo, planned_jobs, snakemake

pytestmark = pytest.mark.slow

# Grad-CAM loads the model through evaluate.load_model: evaluate changes rerun it too.
EVALUATE_ONWARD = {"evaluate": 2, "plots": 2, "gradcam": 2, "compare": 1, "model_card": 2}
TRAIN_ONWARD = {"train": 2, **EVALUATE_ONWARD}
REAL_CHANGE = "\n\n_CODE_VERSION = 2  # a real change: one more statement\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


def plan(repo: Path, workdir: Path) -> dict[str, int]:
    jobs = planned_jobs(workdir, snakefile=repo / "Snakefile")
    return {rule: n for rule, n in jobs.items() if rule != "all"}


def test_the_copy_has_nothing_to_do(repo, tiny_run_copy):
    """Same code in another folder: the fingerprints do not depend on where the code lives."""
    assert plan(repo, tiny_run_copy) == {}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("src/cvpipe/plots.py", {"plots": 2, "compare": 1}),
        ("src/cvpipe/evaluate.py", EVALUATE_ONWARD),
        # Validation macro-F1 picks the best epoch, so training imports metrics too.
        ("src/cvpipe/metrics.py", TRAIN_ONWARD),
        ("src/cvpipe/augment.py", TRAIN_ONWARD),
        ("src/cvpipe/preprocess.py", {"preprocess": 2, **TRAIN_ONWARD}),
        ("src/cvpipe/bench.py", {}),
        ("tests/test_workflow.py", {}),
    ],
)
def test_a_real_change_reruns_its_stage_and_what_follows(repo, tiny_run_copy, path, expected):
    with open(repo / path, "a") as f:
        f.write(REAL_CHANGE)
    assert plan(repo, tiny_run_copy) == expected


def test_comment_docstring_and_formatting_changes_rerun_nothing(repo, tiny_run_copy):
    train = repo / "src" / "cvpipe" / "train.py"
    text = train.read_text().replace('"""', '"""Edited docstring. ', 1)
    text = text.replace("\ndef ", "\n# a new comment\n\n\ndef ")
    train.write_text(text + "\n# the end\n")
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nMore words.\n")
    assert plan(repo, tiny_run_copy) == {}


def test_dry_run_names_the_changed_module(repo, tiny_run_copy):
    with open(repo / "src" / "cvpipe" / "plots.py", "a") as f:
        f.write(REAL_CHANGE)
    out = snakemake(tiny_run_copy, "--dry-run", snakefile=repo / "Snakefile").stdout
    reasons, rule = {}, None
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("reason:"):
            reasons.setdefault(rule, []).append(line)
    assert set(reasons) == {"plots", "compare", "all"}
    for line in reasons["plots"]:
        # before: '<module>:<hash> ...' now: '<module>:<hash> ...': only plots' hash differs.
        before, now = line.split(" before: ")[1].split(" now: ")
        changed = set(now.strip(" '").split()) - set(before.strip(" '").split())
        assert [m.split(":")[0] for m in changed] == ["plots"], line
    # `--summary` gives each output's status. (`--list-changes params` is no help here: in
    # Snakemake 9.27 it lists one output of every job, changed or not.)
    summary = snakemake(tiny_run_copy, "--summary", snakefile=repo / "Snakefile").stdout
    rows = [row.split("\t") for row in summary.splitlines()[1:]]
    changed = {row[0] for row in rows if len(row) > 4 and row[4] == "params changed"}
    assert "results/resnet18/plots/curves.png" in changed
    assert "results/comparison/comparison.html" in changed
    assert all("/plots/" in p or p.startswith("results/comparison/") for p in changed), changed
