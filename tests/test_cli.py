"""The command line: user errors are one clear message with exit status 1, never a traceback."""

import subprocess
import sys

import pytest
from helpers import BIN


def cvpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cvpipe"), *args], capture_output=True, text=True)


def test_missing_data_root_is_one_line(tmp_path):
    proc = cvpipe(
        "index",
        "--data-root",
        str(tmp_path / "nowhere"),
        "--manifest",
        "m.csv",
        "--bad-images",
        "b.csv",
        "--duplicates",
        "d.csv",
        "--split",
        "train=0.7,val=0.15,test=0.15",
        "--seed",
        "0",
        "--on-bad-image",
        "fail",
        "--on-conflicting-labels",
        "fail",
        "--threads",
        "1",
    )
    assert proc.returncode == 1
    # The error is one line, the last; before it only the log line naming the code that ran.
    *before, last = proc.stderr.splitlines()
    assert last.startswith("cvpipe index: error: data.root")
    assert [line.split(" INFO cvpipe: ")[1].split(" from ")[0] for line in before] == [
        "cvpipe 0.1.0"
    ]
    assert "Traceback" not in proc.stderr


def test_bad_training_settings_are_named(tmp_path):
    args = ["--cache-dir", str(tmp_path), "--model", "m.pt", "--history", "h.csv"]
    args += ["--provenance", "p.json", "--threads", "1", "--cache-scratch", ""]
    proc = cvpipe("train", "--config", "{not json", *args)
    assert proc.returncode == 1 and "--config is not valid JSON" in proc.stderr
    proc = cvpipe("train", "--config", '{"epoch": 3}', *args)
    assert proc.returncode == 1 and "unknown training setting(s) ['epoch']" in proc.stderr
    proc = cvpipe("train", "--config", "{}", *args)
    assert (
        proc.returncode == 1
        and f"{tmp_path}/stats.json is missing: run the preprocess stage" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_runs_as_a_module_for_torchrun():
    proc = subprocess.run(
        [sys.executable, "-m", "cvpipe", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for stage in ("synth", "index", "preprocess", "train", "evaluate", "plots", "compare", "bench"):
        assert stage in proc.stdout


@pytest.mark.slow
def test_loader_benchmark_prints_both_loaders():
    proc = cvpipe(
        "bench", "loader", "--images-per-class", "12", "--source-size", "48", "--image-size", "32",
        "--batch-size", "8", "--workers", "1", "--epochs", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "images/s" not in line
    ]
    assert [r.split("|")[1].strip() for r in rows] == [
        "cvpipe cache + batched tensor aug",
        "cvpipe cache + batched tensor aug",
        "ImageFolder + PIL + torchvision transforms",
    ]
    assert rows[-1].rstrip().endswith("1.0x |")
    assert all(float(r.split("|")[3]) > 0 for r in rows)


@pytest.mark.slow
def test_training_benchmark_measures_loader_and_resident_batches(tmp_path):
    proc = cvpipe(
        "bench", "train", "--models", "resnet18", "--images-per-class", "8", "--source-size", "40",
        "--image-size", "32", "--batch-size", "8", "--amp", "bf16", "--workers", "0",
        "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["model"], r["amp"], r["compile"]) for r in rows] == [
        ("resnet18", "bfloat16", False),
        ("resnet18", "off", False),
    ]
    assert all(r["loader_images_per_s"] > 0 and r["resident_images_per_s"] > 0 for r in rows)
    assert "| resnet18 | bfloat16 | False |" in proc.stdout
