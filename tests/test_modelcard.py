"""The model card states what the run's own files say, shows up in the Snakemake report, and
is the same bytes when written again; hand-made inputs cover what a tiny run does not have."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from helpers import EXPERIMENTS, snakemake

from cvpipe.cli import main
from cvpipe.modelcard import Paragraph, Table, to_html, to_markdown

# Inputs as the rule names them, relative to the working directory (the card names them too).
INPUTS = {
    "manifest": "results/dataset/manifest.csv",
    "provenance": "results/{e}/provenance.json",
    "metrics": "results/{e}/eval/metrics.json",
    "history": "results/{e}/train/history.csv",
}


def card_args(experiment: str, stats: str, out: Path, **paths: str) -> list[str]:
    files = {key: pattern.format(e=experiment) for key, pattern in INPUTS.items()} | paths
    args = ["model-card", "--experiment", experiment, "--stats", stats]
    for option, path in files.items():
        args += [f"--{option}", path]
    args += ["--data-root", "data/surface-defects"]
    args += ["--model-file", f"results/{experiment}/train/model.pt"]
    args += ["--onnx-file", f"results/{experiment}/export/model.onnx"]
    return [*args, "--out", str(out / "MODEL_CARD.md"), "--html", str(out / "MODEL_CARD.html")]


def section(card: str, title: str) -> str:
    """The text of one `## title` section."""
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_card_states_the_runs_own_numbers(tiny_run, experiment):
    results = tiny_run / "results"
    card = (results / experiment / "MODEL_CARD.md").read_text()
    metrics = json.loads((results / experiment / "eval" / "metrics.json").read_text())
    provenance = json.loads((results / experiment / "provenance.json").read_text())

    assert f"test accuracy {metrics['accuracy']:.4f}" in card
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in section(card, "Test metrics")
    assert f"| macro F1 | {metrics['macro_f1']:.4f} |" in card
    assert f"| architecture | `{provenance['config']['model']}` (torchvision) |" in card
    size = provenance["config"]["image_size"]
    assert f"| input | {size} × {size} px, RGB |" in card
    assert provenance["git"]["commit"] in section(card, "Provenance")
    assert provenance["code"]["fingerprint"] in section(card, "Provenance")
    assert provenance["data"]["manifest_sha256"] in section(card, "Data")

    with open(results / "dataset" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    counts = Counter((r["class"], r["split"]) for r in rows)
    for name in metrics["classes"]:
        per_split = [counts[name, s] for s in ("train", "val", "test")]
        row = f"| {name} | {' | '.join(map(str, per_split))} | {sum(per_split)} |"
        assert row in section(card, "Data")
        support = metrics["per_class"][name]["support"]
        assert re.search(rf"\| `{name}` \|.* \| {support} \|", section(card, "Test metrics"))
    assert f"| all | {len(rows) // 2} | {len(rows) // 4} | {len(rows) // 4} | {len(rows)} |" in card

    calibration = metrics["calibration"]
    shown = section(card, "Calibration")
    assert f"T = {calibration['temperature']:.4f}" in shown
    for key, name in (("ece", "(ECE)"), ("mce", "(MCE)"), ("nll", "(NLL)")):
        before, after = calibration[key], calibration[f"{key}_scaled"]
        assert f"{name} | {before:.4f} | {after:.4f} |" in shown
    assert f"cvpipe predict --model results/{experiment}/train/model.pt" in card
    assert f"snakemake results/{experiment}/export/model.onnx" in card

    page = (results / experiment / "MODEL_CARD.html").read_text()
    assert f"<td>{metrics['accuracy']:.4f}</td>" in page
    assert provenance["git"]["commit"] in page


def test_card_written_again_is_the_same_bytes(tiny_run, tmp_path, monkeypatch):
    """The command, given the rule's inputs, writes exactly the workflow's card: nothing in it
    depends on when or where it was written."""
    monkeypatch.chdir(tiny_run)
    experiment = EXPERIMENTS[0]
    stats = "results/dataset/cache/32px/stats.json"
    assert main(card_args(experiment, stats, tmp_path)) == 0
    for name in ("MODEL_CARD.md", "MODEL_CARD.html"):
        written = (tiny_run / "results" / experiment / name).read_bytes()
        assert (tmp_path / name).read_bytes() == written, name


def test_report_shows_each_card(tiny_run_copy, tmp_path):
    """`snakemake --report` embeds every card as HTML (which the report displays; Markdown it
    would only offer for download), among the runs' model cards, labelled with its run."""
    report = tmp_path / "report.html"
    snakemake(tiny_run_copy, "--report", str(report))
    text = report.read_text()
    for experiment in EXPERIMENTS:
        entry = f'"results/{experiment}/MODEL_CARD.html": {{'
        assert entry in text
        props = text.split(entry, 1)[1][:3000]
        assert f'"labels": {{"run": "{experiment}", "figure": "model card"}}' in props
        assert '"mime_type": "text/html"' in props
        assert f'"rule": "model_card", "wildcards": "experiment={experiment}"' in props


# --- hand-made inputs ---------------------------------------------------------------------------

CLASSES = ["cat", "dog", "owl"]
SPLIT_SIZES = {"cat": (6, 2, 2), "dog": (3, 1, 1), "owl": (6, 2, 2)}


def make_inputs(folder: Path, calibration: dict | None = None, sizes: bool = True) -> None:
    """A small manifest, stats, provenance, metrics and history, consistent with each other."""
    results = folder / "results"
    (results / "toy" / "eval").mkdir(parents=True)
    (results / "toy" / "train").mkdir()
    fields = ["path", "class", "label", "split", "sha256"] + (["width", "height"] if sizes else [])
    with open(results / "dataset.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(fields)
        for label, name in enumerate(CLASSES):
            splits = [
                s
                for s, n in zip(("train", "val", "test"), SPLIT_SIZES[name], strict=True)
                for _ in range(n)
            ]
            for i, split in enumerate(splits):
                ext = "jpg" if i % 2 else "png"
                dims = [str(100 + i), "80"] if sizes else []
                writer.writerow([f"{name}/{i}.{ext}", name, label, split, f"{i:064x}", *dims])
    digest = hashlib.sha256((results / "dataset.csv").read_bytes()).hexdigest()
    stats = {"classes": CLASSES, "image_size": 64, "resize": "letterbox", "mean": [0.5] * 3,
             "std": [0.25] * 3, "manifest_sha256": digest}  # fmt: skip
    config = {"model": "mobilenet_v3_small", "weights": "DEFAULT", "normalize": "auto",
              "monitor": "val_macro_f1", "augment": {"hflip": True}}  # fmt: skip
    provenance = {
        "created_utc": "2026-01-02T03:04:05+00:00", "config": config,
        "data": {"manifest_sha256": digest},
        "git": {"commit": "c0ffee" * 6 + "abcd", "describe": "v1.2", "dirty": False},
        "code": {"stage": "train", "fingerprint": "f1" * 32}, "versions": {"torch": "9.9"},
        "container": {"uri": "docker://example/cvpipe:1", "digest": "sha256:abc"},
    }  # fmt: skip
    per_class = {n: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": SPLIT_SIZES[n][2],
                     "roc_auc": None} for n in CLASSES}  # fmt: skip
    metrics = {"model": "mobilenet_v3_small", "epoch": 2, "accuracy": 0.625, "macro_f1": 0.5,
               "num_samples": 5, "classes": CLASSES, "per_class": per_class}  # fmt: skip
    if calibration is not None:
        metrics["calibration"] = calibration
    (results / "stats.json").write_text(json.dumps(stats))
    (results / "toy" / "provenance.json").write_text(json.dumps(provenance))
    (results / "toy" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    (results / "toy" / "train" / "history.csv").write_text(
        "epoch,val_acc,val_macro_f1\n1,0.5,0.4\n2,0.6,0.55\n3,0.6,0.5\n"
    )


def write_card(folder: Path, monkeypatch, **paths: str) -> str:
    monkeypatch.chdir(folder)
    args = card_args("toy", "results/stats.json", folder, manifest="results/dataset.csv", **paths)
    assert main(args) == 0
    return (folder / "MODEL_CARD.md").read_text()


def test_card_from_hand_made_files(tmp_path, monkeypatch):
    calibration = {"temperature": 1.5, "n_bins": 15, "ece": 0.12, "ece_scaled": 0.04,
                   "nll": 0.9, "nll_scaled": 0.7, "reliability": [{"count": 2}],
                   "fit": {"images": 5}}  # fmt: skip
    make_inputs(tmp_path, calibration=calibration)
    card = write_card(tmp_path, monkeypatch)
    assert "| initial weights | `DEFAULT` |" in card
    assert "ImageNet's per-channel mean and std" in card  # auto + pretrained weights
    assert "letterbox: the longer side scaled to 64 px" in card
    assert "| dog | 3 | 1 | 1 | 5 |" in card
    assert "| all | 15 | 5 | 5 | 25 |" in card
    assert "the smallest class, `dog`, has 5" in card
    assert "The test split has 1 to 2 images per class" in card
    assert "formats: PNG (13 images), JPG (12 images)" in card
    assert "stored sizes (width × height): 100 × 80 px (3 images)" in card
    assert "| `cat` | 0.5000 | 0.5000 | 0.5000 | n/a | 2 |" in card  # ROC-AUC null
    assert "model kept: epoch 2, its `val_macro_f1` 0.5500" in card
    assert "| `augment.hflip` | `true` |" in card
    assert "| container | `docker://example/cvpipe:1`, digest `sha256:abc` |" in card
    assert "| uncommitted changes | no |" in card
    calibration = section(card, "Calibration")
    assert "T = 1.5000, fitted on 5 validation images" in calibration
    assert "over 15 equal-width confidence bins" in calibration
    assert "| expected calibration error (ECE) | 0.1200 | 0.0400 |" in calibration
    assert "| negative log-likelihood (NLL) | 0.9000 | 0.7000 |" in calibration
    assert "reliability" not in calibration and "not computed" not in calibration
    page = (tmp_path / "MODEL_CARD.html").read_text()
    assert "<h2>Calibration</h2>" in page and "<td>0.0400</td>" in page


def test_partial_calibration_and_no_sizes(tmp_path, monkeypatch):
    """Only the numbers that exist are shown; a manifest without sizes just says less."""
    make_inputs(tmp_path, calibration={"ece": 0.2, "mce_scaled": 0.3}, sizes=False)
    card = write_card(tmp_path, monkeypatch)
    calibration = section(card, "Calibration")
    assert "| expected calibration error (ECE) | 0.2000 | n/a |" in calibration
    assert "| maximum calibration error (MCE) | n/a | 0.3000 |" in calibration
    assert "T =" not in calibration
    assert "stored sizes" not in card and "formats: PNG" in card


@pytest.mark.parametrize("calibration", [None, {}])
def test_no_calibration_is_not_computed(tmp_path, monkeypatch, calibration):
    """A metrics.json without (or with an empty) calibration section, as before calibration
    existed: the section says so instead of vanishing."""
    make_inputs(tmp_path, calibration=calibration)
    card = write_card(tmp_path, monkeypatch)
    assert "Calibration was not computed" in section(card, "Calibration")


def test_inputs_from_another_run_are_refused(tmp_path, monkeypatch, capsys):
    """A manifest changed after training would make the card describe data the model never
    saw: the command names the file and the way out instead."""
    make_inputs(tmp_path)
    with open(tmp_path / "results" / "dataset.csv", "a") as f:
        f.write("cat/new.png,cat,0,train," + "f" * 64 + ",1,1\n")
    monkeypatch.chdir(tmp_path)
    args = card_args("toy", "results/stats.json", tmp_path, manifest="results/dataset.csv")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "results/stats.json records manifest sha256" in err and "snakemake" in err
    assert not (tmp_path / "MODEL_CARD.md").exists()


def test_missing_input_is_named(tmp_path, monkeypatch, capsys):
    make_inputs(tmp_path)
    (tmp_path / "results" / "toy" / "eval" / "metrics.json").unlink()
    monkeypatch.chdir(tmp_path)
    args = card_args("toy", "results/stats.json", tmp_path, manifest="results/dataset.csv")
    assert main(args) == 1
    assert "results/toy/eval/metrics.json does not exist" in capsys.readouterr().err


def test_html_and_markdown_escape_what_the_data_names():
    """Class names are folder names: whatever they hold is shown as text, not as markup."""
    page = to_html([Paragraph("a `<b>` & c"), Table(["x|y"], [["<i>"]])], "t")
    assert "<code>&lt;b&gt;</code> &amp; c" in page and "<td>&lt;i&gt;</td>" in page
    assert "| x\\|y |" in to_markdown([Table(["x|y"], [["1"]])])
