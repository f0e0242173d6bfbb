"""Calibration: temperature scaling fitted on the validation split at the end of training (also
under torchrun), used by evaluate for predictions.csv, and reported in metrics.json with the
reliability diagram that the real plots rule draws."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import subprocess

import numpy as np
import pytest
import torch
from helpers import BIN, EXPERIMENTS, tool_env
from torchmetrics.functional.classification import multiclass_calibration_error

from cvpipe import calibration
from cvpipe.augment import eval_transform
from cvpipe.data import CacheSplit, build_loader
from cvpipe.errors import CvpipeError
from cvpipe.evaluate import evaluate, load_model
from cvpipe.train import TrainConfig, train

TINY = {"model": "resnet18", "image_size": 32, "batch_size": 8, "epochs": 1}


def overconfident(seed: int = 0, n: int = 600, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a decent classifier (about 75% right), multiplied by 5: over-confident."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.5
    return 5 * logits, labels


def ece_from_bins(bins: list[dict], n: int) -> float:
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / n


def test_overconfident_model_gets_a_temperature_above_one_and_a_lower_ece():
    logits, labels = overconfident()
    fit = calibration.fit_temperature(torch.tensor(logits), torch.tensor(labels))
    assert fit["temperature"] > 1 and fit["images"] == len(labels)
    assert fit["val_nll_scaled"] < fit["val_nll"]
    # The search found the minimum: no temperature on a fine grid does better.
    grid = np.exp(np.linspace(math.log(0.5), math.log(20), 400))
    nll = [calibration.nll_sum(torch.tensor(logits), torch.tensor(labels), t) for t in grid]
    assert fit["val_nll_scaled"] <= min(nll).item() / len(labels) + 1e-12
    report = calibration.calibration_report(logits, labels, fit["temperature"])
    assert report["ece_scaled"] < report["ece"] / 2
    assert report["nll_scaled"] == pytest.approx(fit["val_nll_scaled"], rel=1e-9)
    # Scaling never changes a prediction.
    assert (calibration.softmax(logits, fit["temperature"]).argmax(1) == logits.argmax(1)).all()


def test_ece_and_mce_agree_with_a_hand_checked_example_and_torchmetrics():
    # Confidences 0.9 (right), 0.8 (wrong), 0.62 and 0.64 (one right, one wrong: the same bin
    # [0.6, 0.667)), 0.55 (right). ECE = (0.1 + 0.8 + 2 * |0.5 - 0.63| + 0.45) / 5 = 0.322.
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.38, 0.62], [0.64, 0.36], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1, 0])
    assert calibration.calibration_error(probs, labels, "l1") == pytest.approx(0.322, abs=1e-6)
    assert calibration.calibration_error(probs, labels, "max") == pytest.approx(0.8, abs=1e-6)
    bins = calibration.reliability_bins(probs, labels)
    assert [b["count"] for b in bins] == [0] * 8 + [1, 2, 0, 0, 1, 1, 0]
    assert bins[9]["confidence"] == pytest.approx(0.63) and bins[9]["accuracy"] == 0.5
    assert ece_from_bins(bins, 5) == pytest.approx(0.322, abs=1e-12)

    logits, labels = overconfident(seed=1)
    report = calibration.calibration_report(logits, labels, 2.0)
    for suffix, t in (("", 1.0), ("_scaled", 2.0)):
        probs_t = torch.softmax(torch.tensor(logits) / t, dim=1)
        for norm, key in (("l1", "ece"), ("max", "mce")):
            library = multiclass_calibration_error(
                probs_t, torch.tensor(labels), 4, n_bins=15, norm=norm
            )
            assert report[f"{key}{suffix}"] == pytest.approx(library.item(), abs=1e-6)
        # The figure's bins give the same ECE (no confidence here rounds to 1.0).
        bins = report[f"reliability{suffix}"]
        assert len(bins) == 15 and sum(b["count"] for b in bins) == len(labels)
        assert ece_from_bins(bins, len(labels)) == pytest.approx(report[f"ece{suffix}"], abs=1e-6)


@pytest.fixture(scope="module")
def model_file(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    cfg = TrainConfig.from_dict(TINY)
    train(cfg, tiny_cache / "cache", out / "model.pt", out / "history.csv", threads=2)
    return out / "model.pt"


def val_temperature(model_path, cache) -> dict:
    """The fit redone in this process, from the model file, on the whole validation split."""
    model, saved = load_model(model_path, torch.device("cpu"))
    mean, std = torch.tensor(saved["mean"]), torch.tensor(saved["std"])
    loader = build_loader(CacheSplit(cache, "val"), 5, train=False)

    def transform(images: torch.Tensor) -> torch.Tensor:
        return eval_transform(images, mean, std)

    cpu = torch.device("cpu")
    logits, labels = calibration.collect_logits(
        model, loader, transform, contextlib.nullcontext, cpu
    )
    return calibration.fit_temperature(logits, labels)


def test_training_stores_the_temperature_fitted_on_the_validation_split(model_file, tiny_cache):
    saved = torch.load(model_file, weights_only=True)
    fit = saved["calibration_fit"]
    assert isinstance(saved["temperature"], float) and saved["temperature"] > 0
    assert fit["images"] == len(CacheSplit(tiny_cache / "cache", "val")) == 12
    assert fit["val_nll_scaled"] <= fit["val_nll"]
    # Refitted here with other batch sizes: the logits differ in the last float32 bits, and
    # near its minimum the NLL is flat, so T agrees to about 1e-5.
    again = val_temperature(model_file, tiny_cache / "cache")
    assert again["temperature"] == pytest.approx(saved["temperature"], rel=1e-4)


def test_evaluate_writes_probabilities_scaled_by_the_stored_temperature(
    model_file, tiny_cache, tmp_path
):
    saved = torch.load(model_file, weights_only=True)
    saved["temperature"] = 2.5  # a clearly visible one
    model_path = tmp_path / "model.pt"
    torch.save(saved, model_path)
    outputs = [tmp_path / name for name in ("metrics.json", "predictions.csv", "timing.json")]
    metrics = evaluate(model_path, tiny_cache / "cache", tiny_cache / "manifest.csv", *outputs)

    model, _ = load_model(model_path, torch.device("cpu"))
    mean, std = torch.tensor(saved["mean"]), torch.tensor(saved["std"])
    test = CacheSplit(tiny_cache / "cache", "test")
    with torch.no_grad():
        logits = model(eval_transform(torch.from_numpy(np.array(test.images)), mean, std)).numpy()
    with open(outputs[1]) as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[f"p_{c}"]) for c in saved["classes"]] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs, calibration.softmax(logits, 2.5), atol=2e-6)
    cal = json.loads(outputs[0].read_text())["calibration"]
    assert cal["temperature"] == 2.5 and cal["fit"] == saved["calibration_fit"]
    # Scaling changes no prediction: accuracy is that of the raw logits.
    accuracy = (logits.argmax(1) == test.labels).mean()
    assert metrics["accuracy"] == pytest.approx(accuracy)

    del saved["temperature"]
    torch.save(saved, model_path)
    with pytest.raises(CvpipeError, match=r"model\.pt holds no usable temperature"):
        evaluate(model_path, tiny_cache / "cache", tiny_cache / "manifest.csv", *outputs)


@pytest.mark.slow
def test_two_processes_fit_the_temperature_of_the_whole_validation_split(tiny_cache, tmp_path):
    """Under torchrun each rank holds half the validation split; the temperature is the one
    fitted on all of it, and the job ends (no rank waits for a collective that never comes)."""
    config = json.dumps({**TINY, "ddp_processes": 2})
    out = tmp_path / "ddp"
    cmd = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "cvpipe", "train",
        "--config", config, "--cache-dir", str(tiny_cache / "cache"),
        "--model", str(out / "model.pt"), "--history", str(out / "history.csv"),
        "--provenance", str(out / "provenance.json"),
        "--threads", "1", "--cache-scratch", "",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["calibration_fit"]["images"] == 12
    again = val_temperature(out / "model.pt", tiny_cache / "cache")
    assert again["temperature"] == pytest.approx(saved["temperature"], rel=1e-4)


@pytest.mark.slow
def test_workflow_reports_calibration_and_draws_the_reliability_diagram(tiny_run):
    for exp in EXPERIMENTS:
        metrics = json.loads((tiny_run / "results" / exp / "eval" / "metrics.json").read_text())
        cal = metrics["calibration"]
        model = torch.load(tiny_run / "results" / exp / "train" / "model.pt", weights_only=True)
        assert cal["temperature"] == model["temperature"]
        for key in ("ece", "mce", "nll"):
            assert cal[key] >= 0 and cal[f"{key}_scaled"] >= 0
        assert sum(b["count"] for b in cal["reliability_scaled"]) == metrics["num_samples"]
        png = tiny_run / "results" / exp / "plots" / "reliability.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
