"""cvpipe as a Snakemake module of another project, as the workflow catalog deploys it
(`snakedeploy deploy-workflow`): the project's own workflow/Snakefile declares the module, its
own config/config.yaml and data; real snakemake runs there, and everything lands in the project."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml
from helpers import REPO, snakemake

# What snakedeploy writes into <project>/workflow/Snakefile, with a local path instead of
# github(...): the jobs run the code of that cvpipe checkout.
PROJECT_SNAKEFILE = """\
configfile: "config/config.yaml"


module cvpipe:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from cvpipe
"""

EXPERIMENTS = ("small", "small_seed1")


def make_project(project: Path) -> None:
    """A project folder: its Snakefile, a tiny config (two 1-epoch experiments), its images."""
    from cvpipe.synth import make_dataset

    (project / "workflow").mkdir(parents=True)
    snakefile = REPO / "workflow" / "Snakefile"
    (project / "workflow" / "Snakefile").write_text(PROJECT_SNAKEFILE.format(snakefile=snakefile))
    make_dataset(project / "images", images_per_class=8, size=32, seed=1)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"].update(root="images", split={"train": 0.5, "val": 0.25, "test": 0.25})
    config["train"].update(image_size=24, epochs=1, batch_size=8, warmup_epochs=0)
    # One image size: both experiments share one preprocessed cache (fewer jobs, faster test).
    config["experiments"] = {"small": {}, "small_seed1": {"seed": 1}}
    config["plots"]["samples"] = 4
    (project / "config").mkdir()
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def test_module_runs_in_its_own_project(tmp_path):
    project = tmp_path / "project"
    make_project(project)
    repo_results = sorted((REPO / "results").rglob("*")) if (REPO / "results").exists() else []

    snakemake(
        project,
        "results/comparison/comparison.md",
        snakefile=project / "workflow" / "Snakefile",
        configfiles=[project / "config" / "config.yaml"],
    )

    comparison = project / "results" / "comparison"
    for name in ("comparison.csv", "comparison.md", "comparison.html", "comparison.png"):
        assert (comparison / name).stat().st_size > 0, name
    with open(comparison / "comparison.csv", newline="") as f:
        assert [row["experiment"] for row in csv.DictReader(f)] == list(EXPERIMENTS)
    for experiment in EXPERIMENTS:
        assert (project / "results" / experiment / "eval" / "metrics.json").is_file()
    # The project's data was used (not the built-in set), and nothing went into the checkout.
    assert not (project / "data").exists()
    with open(project / "results" / "dataset" / "manifest.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4 * 8  # the project's images: 4 classes of 8
    after = sorted((REPO / "results").rglob("*")) if (REPO / "results").exists() else []
    assert after == repo_results
