"""The real workflow end to end: real snakemake on the real Snakefile, tiny built-in data.

These are the behaviours a user relies on: the results exist, a second `snakemake` has nothing
to do, only what depends on a change reruns, runs are reproducible, a killed training resumes to
the same result, and bad data or a bad config stops the run with a message naming the culprit.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import signal
import subprocess
import time
from html import escape
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    BIN,
    CONFIGS,
    EXPERIMENTS,
    REPO,
    planned_jobs,
    snakemake,
    snakemake_command,
    tool_env,
)

from cvpipe import stagecode
from cvpipe.synth import draw_image

pytestmark = pytest.mark.slow
PLOTS = ("curves", "confusion", "samples", "per_class", "reliability", "gradcam")


def test_pipeline_produces_every_result(tiny_run):
    results = tiny_run / "results"
    classes = ["dent", "ok", "scratch", "stain"]
    with open(results / "dataset" / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == 4 * 16
    assert sum(r["split"] == "test" for r in manifest) == 16
    for exp in EXPERIMENTS:
        metrics = json.loads((results / exp / "eval" / "metrics.json").read_text())
        assert metrics["classes"] == classes and metrics["num_samples"] == 16
        assert 0 <= metrics["accuracy"] <= 1 and set(metrics["per_class"]) == set(classes)
        assert np.array(metrics["confusion_matrix"]).sum() == 16
        with open(results / exp / "eval" / "predictions.csv") as f:
            predictions = list(csv.DictReader(f))
        assert len(predictions) == 16
        assert [p["path"] for p in predictions] == [
            r["path"] for r in manifest if r["split"] == "test"
        ]
        for p in predictions:
            assert sum(float(p[f"p_{c}"]) for c in classes) == pytest.approx(1, abs=1e-4)
        assert (
            json.loads((results / exp / "eval" / "timing.json").read_text())[
                "inference_images_per_s"
            ]
            > 0
        )
        assert json.loads((results / exp / "provenance.json").read_text())["data"][
            "manifest_sha256"
        ]
        for plot in PLOTS:
            assert (results / exp / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    with open(results / "comparison" / "comparison.csv") as f:
        assert [r["experiment"] for r in csv.DictReader(f)] == list(EXPERIMENTS)
    # The two experiments use different image sizes, hence two caches.
    assert {p.name for p in (results / "dataset" / "cache").iterdir()} == {"32px", "24px"}


def test_report_holds_every_figure_and_the_comparison(tiny_run_copy):
    # As `make run` builds it.
    metadata = "results/comparison/report-metadata.json"
    snakemake(tiny_run_copy, "--report", "results/report.html", "--report-metadata", metadata)
    html = (tiny_run_copy / "results" / "report.html").read_text()
    for name in ("comparison.html", "comparison.png", *(f"{p}.png" for p in PLOTS)):
        assert name in html
    for exp in EXPERIMENTS:
        assert exp in html
    # It opens with what ran: the config (tiny.yaml's values), the container, the data and
    # code fingerprints.
    assert "train.augment.hflip" in html and "experiments.resnet18_48px.image_size" in html
    assert "synth.images_per_class" in html and ">16<" in html
    assert "docker://ghcr.io/cvpipe/cvpipe" in html
    ran = json.loads((tiny_run_copy / metadata).read_text())
    manifest = tiny_run_copy / "results" / "dataset" / "manifest.csv"
    assert ran["data: manifest sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert ran["code: evaluate"] == stagecode.short(stagecode.stage_hashes(["evaluate"]))
    for key, value in ran.items():
        assert json.dumps(key)[1:-1] in html and json.dumps(value)[1:-1] in html, key
    assert_report_layout(tiny_run_copy, html)


# The report's sidebar: the comparison, then the runs' figures by kind (a table of runs each), so
# that 100 runs make 100 rows, not 100 categories.
RUN_FIGURES = {
    "Model cards": "MODEL_CARD.html",
    "Training curves": "plots/curves.png",
    "Confusion matrices": "plots/confusion.png",
    "Sample predictions": "plots/samples.png",
    "Per-class scores": "plots/per_class.png",
    "Reliability diagrams": "plots/reliability.png",
    "Grad-CAM": "plots/gradcam.png",
}


def report_contents(html: str) -> tuple[dict, dict]:
    """The report's embedded `categories` (category -> subcategory -> paths) and `results`."""

    def variable(name: str) -> dict:
        script = html.split(f'<script id="{name}">', 1)[1]
        return json.loads(script.split(f"var {name} = ", 1)[1].split(";\n", 1)[0])

    return variable("categories"), variable("results")


def assert_report_layout(workdir: Path, report: str) -> None:
    """What a reader of a 100-run report relies on: two categories, whatever the runs."""
    categories, results = report_contents(report)
    assert sorted(categories) == ["Comparison", "Runs"]  # the sidebar, whatever the runs
    # Comparison: one table, its rows in label order: the table, the chart, the two files.
    comparison = categories["Comparison"]["Other"]
    rows = sorted(comparison, key=lambda path: results[path]["labels"]["figure"])
    assert [Path(path).name for path in rows] == [
        "comparison.html",
        "comparison.png",
        "groups.csv",
        "best.json",
    ]
    best = json.loads((workdir / "results" / "comparison" / "best.json").read_text())
    page = base64.b64decode(results[rows[0]]["data_uri"].split("base64,", 1)[1]).decode()
    assert "Configurations over seeds" in page
    assert f"Chosen on validation: <b>{escape(best['configuration'])}</b>" in page
    # Runs: one subcategory per kind of figure, each with every run's figure, labelled by run.
    assert categories["Runs"].keys() == RUN_FIGURES.keys()
    for kind, file in RUN_FIGURES.items():
        paths = categories["Runs"][kind]
        assert sorted(paths) == sorted(f"results/{exp}/{file}" for exp in EXPERIMENTS), kind
        for path in paths:
            assert results[path]["labels"]["run"] == path.split("/")[1]


def test_second_run_has_nothing_to_do(tiny_run):
    assert planned_jobs(tiny_run) == {}


def without_all(jobs: dict[str, int]) -> dict[str, int]:
    return {rule: n for rule, n in jobs.items() if rule != "all"}


def test_plot_setting_reruns_only_figures(tiny_run_copy, tmp_path):
    overlay = tmp_path / "dpi.yaml"
    overlay.write_text("plots:\n  dpi: 60\n")
    configs = [*CONFIGS, overlay]
    assert without_all(planned_jobs(tiny_run_copy, configfiles=configs)) == {
        "plots": 2,
        "gradcam": 2,
        "compare": 1,
    }
    model = tiny_run_copy / "results" / "resnet18" / "train" / "model.pt"
    curves = tiny_run_copy / "results" / "resnet18" / "plots" / "curves.png"
    model_mtime, old_curves = model.stat().st_mtime_ns, curves.read_bytes()
    snakemake(tiny_run_copy, configfiles=configs)
    assert model.stat().st_mtime_ns == model_mtime
    assert curves.read_bytes() != old_curves


def test_new_image_reruns_everything_from_indexing(tiny_run_copy):
    image = draw_image(seed=123, class_index=1, index=0, size=40)
    import cv2

    cv2.imwrite(str(tiny_run_copy / "data" / "surface-defects" / "ok" / "new.png"), image)
    assert without_all(planned_jobs(tiny_run_copy)) == {
        "index": 1, "preprocess": 2, "train": 2, "evaluate": 2, "plots": 2,
        "gradcam": 2, "compare": 1, "model_card": 2,
    }  # fmt: skip


def test_touching_images_reruns_nothing(tiny_run_copy):
    later = time.time() + 60
    for path in (tiny_run_copy / "data" / "surface-defects").rglob("*.png"):
        os.utime(path, (later, later))
    assert planned_jobs(tiny_run_copy) == {}


def test_same_config_and_seed_give_identical_metrics(tiny_run, tmp_path):
    snakemake(tmp_path, *(f"results/{e}/eval/metrics.json" for e in EXPERIMENTS))
    for exp in EXPERIMENTS:
        path = Path("results") / exp / "eval" / "metrics.json"
        assert (tmp_path / path).read_bytes() == (tiny_run / path).read_bytes()


def _training_pid(workdir: Path) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                b"train" in cmd
                and any(c.endswith(b"cvpipe") for c in cmd)
                and (proc / "cwd").resolve() == workdir
            ):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def test_killed_training_resumes_to_the_same_result(tiny_run, tmp_path):
    target = "results/resnet18/eval/metrics.json"
    cmd = [*snakemake_command(tmp_path, target), "--configfile", *map(str, CONFIGS)]
    run = subprocess.Popen(
        cmd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "results" / "resnet18" / "train" / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while not last.exists():
        assert run.poll() is None and time.time() < deadline, "training never wrote a checkpoint"
        time.sleep(0.02)
    pid = _training_pid(tmp_path.resolve())
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert run.wait(timeout=120) != 0
    assert torch.load(last, weights_only=True)["epoch"] < 2  # killed before the last (third) epoch
    assert not (tmp_path / "results" / "resnet18" / "train" / "model.pt").exists()

    snakemake(tmp_path, target)
    log = (tmp_path / "results" / "logs" / "train" / "resnet18.log").read_text()
    assert "resuming from" in log
    assert (tmp_path / target).read_bytes() == (tiny_run / target).read_bytes()


def test_truncated_image_stops_the_run_naming_the_file(tmp_path):
    from cvpipe.synth import make_dataset

    data = make_dataset(tmp_path / "images", images_per_class=8, size=32, seed=1)
    victim = data / "dent" / "dent_0003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(f"data:\n  root: {data}\n")
    proc = snakemake(tmp_path, configfiles=[*CONFIGS, overlay], check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert f"{victim}: truncated PNG (no IEND chunk)" in output
    assert "Traceback" not in output


def test_lint_and_format_are_clean():
    lint = subprocess.run(
        [str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, env=tool_env()
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
