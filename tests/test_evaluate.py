"""The evaluate stage as a plain function: deterministic metrics, throughput measured after
start-up and over enough images."""

import json

import pytest

from cvpipe.evaluate import MIN_TIMED_IMAGES, evaluate
from cvpipe.train import TrainConfig, train


@pytest.fixture(scope="module")
def model_file(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig.from_dict(
        {"model": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8}
    )
    train(cfg, tiny_cache / "cache", out / "model.pt", out / "history.csv", threads=2)
    return out / "model.pt"


def run_evaluate(tiny_cache, model_file, out):
    outputs = [out / name for name in ("metrics.json", "predictions.csv", "timing.json")]
    evaluate(model_file, tiny_cache / "cache", tiny_cache / "manifest.csv", *outputs, threads=2)
    return [p.read_bytes() for p in outputs]


def test_metrics_are_byte_identical_and_timing_covers_enough_images(
    tiny_cache, model_file, tmp_path
):
    metrics_a, predictions_a, timing_a = run_evaluate(tiny_cache, model_file, tmp_path / "a")
    metrics_b, predictions_b, _ = run_evaluate(tiny_cache, model_file, tmp_path / "b")
    assert metrics_a == metrics_b and predictions_a == predictions_b
    timing = json.loads(timing_a)
    # 12 test images, one batch: timing that alone would measure start-up, not throughput.
    assert timing["num_images"] == 12
    assert timing["timed_images"] >= MIN_TIMED_IMAGES
    assert timing["inference_images_per_s"] > 0
    assert len(predictions_a.decode().splitlines()) == 1 + 12
