"""The compare stage reads the result files the rule passes, each once, and writes the same
comparison the workflow did, with the configuration chosen on validation."""

from __future__ import annotations

import csv
import json
import pathlib

from helpers import EXPERIMENTS

from cvpipe.cli import main

INPUTS = {
    "metrics": "eval/metrics.json",
    "timing": "eval/timing.json",
    "provenance": "provenance.json",
    "history": "train/history.csv",
}
OUTPUTS = ("comparison.csv", "comparison.md", "comparison.html", "comparison.png", "metrics.json")
GROUPS = {"groups-csv": "groups.csv", "groups-md": "groups.md", "best": "best.json"}


def test_compare_reads_each_declared_file_once(tiny_run, tmp_path, monkeypatch):
    results = tiny_run / "results"
    args = ["compare", "--experiment", *EXPERIMENTS]
    for option, name in INPUTS.items():
        args += [f"--{option}", *(str(results / e / name) for e in EXPERIMENTS)]
    out = tmp_path / "out"
    for option, name in zip(("csv", "md", "html", "png", "metrics-out"), OUTPUTS, strict=True):
        args += [f"--{option}", str(out / name)]
    args += [arg for option, name in GROUPS.items() for arg in (f"--{option}", str(out / name))]
    args += ["--history-dir", str(out / "history"), "--dpi", "120", "--container", "none"]
    args += ["--report-metadata", str(out / "report-metadata.json")]
    args += ["--stage-code", "evaluate=evaluate:0123abcd", "--stage-code", "plots=plots:4567ef01"]
    reads: list[str] = []
    read_text = pathlib.Path.read_text

    def counting_read_text(self, *a, **k):
        reads.append(str(self))
        return read_text(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", counting_read_text)
    assert main(args) == 0
    monkeypatch.undo()

    declared = [str(results / e / name) for name in INPUTS.values() for e in EXPERIMENTS]
    assert sorted(r for r in reads if r.startswith(str(results))) == sorted(declared)
    # Same outputs as the workflow's own compare job (which also listed the stages' code).
    comparison = results / "comparison"
    for name in (
        "comparison.csv",
        "comparison.md",
        "comparison.png",
        "metrics.json",
        *GROUPS.values(),
    ):
        assert (out / name).read_bytes() == (comparison / name).read_bytes(), name
    for e in EXPERIMENTS:
        assert (out / "history" / f"{e}.csv").read_text() == (
            comparison / "history" / f"{e}.csv"
        ).read_text()


def test_the_workflow_chooses_on_validation(tiny_run):
    """The tiny run's two experiments differ in image size: two configurations of one seed, and
    best.json names the one whose model file scored higher on validation (its `monitor`)."""
    results = tiny_run / "results"
    scores = {}
    for e in EXPERIMENTS:
        epoch = json.loads((results / e / "eval" / "metrics.json").read_text())["epoch"]
        with open(results / e / "train" / "history.csv", newline="") as f:
            row = next(r for r in csv.DictReader(f) if r["epoch"] == str(epoch))
        scores[e] = float(row["val_acc"])
    best = json.loads((results / "comparison" / "best.json").read_text())
    assert (best["chosen_on"], best["monitor"]) == ("validation", "val_acc")
    assert best["runs"] == [max(EXPERIMENTS, key=lambda e: (scores[e], -EXPERIMENTS.index(e)))]
    assert best["validation"]["mean"] == scores[best["runs"][0]]
    assert best["test"]["accuracy"]["ci95"] is None  # one seed: no interval
    with open(results / "comparison" / "groups.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["runs"] for r in rows) == sorted(EXPERIMENTS)
    assert {r["n_seeds"] for r in rows} == {"1"} and {r["test_accuracy_std"] for r in rows} == {
        "n/a"
    }
