"""`cvpipe predict` on new images: the trained model's own preprocessing (the same probabilities
as evaluate's predictions.csv), bad files named or skipped, folders and lists of paths,
torchvision's ImageNet models from torch hub's cache, no snakemake needed, and the optional
workflow stage."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from helpers import CONFIGS, EXPERIMENTS, REPO, planned_jobs, snakemake

from cvpipe.cli import main
from cvpipe.evaluate import evaluate
from cvpipe.index import read_manifest, split_rows, write_index
from cvpipe.preprocess import preprocess
from cvpipe.synth import make_dataset
from cvpipe.train import TrainConfig, train

CLASSES = ["dent", "ok", "scratch", "stain"]


def stage_run(work: Path, mode: str, cache_size: int, augment: dict) -> Path:
    """Non-square originals, indexed, preprocessed to `cache_size` by `mode`, trained at 32 px
    and evaluated by the stage functions (one epoch), as the workflow does."""
    make_dataset(work / "data", images_per_class=8, size=40, seed=1)
    for i, path in enumerate(sorted((work / "data").rglob("*.png"))):
        image = cv2.imread(str(path))
        cv2.imwrite(str(path), image[: 40 - (i % 2) * 12, : 20 + (i % 3) * 10])
    ratios = {"train": 0.5, "val": 0.25, "test": 0.25}
    write_index(work / "data", work / "manifest.csv", work / "bad.csv", ratios, seed=0)
    preprocess(work / "manifest.csv", work / "data", work / "cache", size=cache_size, mode=mode)
    cfg = TrainConfig.from_dict(
        {"model": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 8, "augment": augment}
    )
    train(cfg, work / "cache", work / "model.pt", work / "history.csv", threads=2)
    outputs = [work / name for name in ("metrics.json", "predictions.csv", "timing.json")]
    with pytest.MonkeyPatch.context() as patch:  # no repeat passes to time (seconds, unused)
        patch.setattr("cvpipe.evaluate.MIN_TIMED_IMAGES", 0)
        evaluate(work / "model.pt", work / "cache", work / "manifest.csv", *outputs, threads=2)
    return work


@pytest.fixture(scope="module")
def letterbox_run(tmp_path_factory) -> Path:
    """What the workflow does with `preprocess.resize: letterbox` (a cache at image_size)."""
    work = tmp_path_factory.mktemp("letterbox")
    return stage_run(work, "letterbox", 32, {"preset": "surface"})


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory) -> Path:
    """The natural preset: random resized crops from a 37 px cache (auto for 32 px), centre
    crops for evaluation."""
    work = tmp_path_factory.mktemp("natural")
    return stage_run(work, "crop", 37, {"preset": "natural"})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cvpipe(*args: str | Path) -> int:
    """The real command line, in this process."""
    return main(["predict", *map(str, args)])


def assert_matches_evaluate(model: Path, data_root: Path, results: Path, tmp_path: Path) -> None:
    """predict on the test split's originals gives evaluate's probabilities (to 1e-5)."""
    test = split_rows(read_manifest(results / "manifest.csv"), "test")
    listing = tmp_path / "test.txt"
    listing.write_text("".join(f"{data_root.resolve() / r['path']}\n" for r in test))
    assert (
        cvpipe("--model", model, "--device", "cpu", "--out", tmp_path / "p.csv", f"@{listing}") == 0
    )
    predicted = read_csv(tmp_path / "p.csv")
    expected = read_csv(results / "predictions.csv")
    assert len(predicted) == len(expected) == len(test)
    for got, want in zip(predicted, expected, strict=True):
        assert Path(got["path"]).relative_to(data_root.resolve()).as_posix() == want["path"]
        assert got["predicted"] == want["predicted"]
        for c in CLASSES:
            assert float(got[f"p_{c}"]) == pytest.approx(float(want[f"p_{c}"]), abs=1e-5)


@pytest.mark.slow
def test_crop_model_predicts_what_evaluate_reported(tiny_run, tmp_path):
    results = tiny_run / "results"
    model = results / "resnet18" / "train" / "model.pt"
    assert torch.load(model, weights_only=True)["resize"] == "crop"
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    shutil.copy(results / "dataset" / "manifest.csv", eval_dir)
    shutil.copy(results / "resnet18" / "eval" / "predictions.csv", eval_dir)
    assert_matches_evaluate(model, tiny_run / "data" / "surface-defects", eval_dir, tmp_path)


def test_letterbox_model_predicts_what_evaluate_reported(letterbox_run, tmp_path):
    assert torch.load(letterbox_run / "model.pt", weights_only=True)["resize"] == "letterbox"
    assert_matches_evaluate(
        letterbox_run / "model.pt", letterbox_run / "data", letterbox_run, tmp_path
    )


def test_natural_model_predicts_what_evaluate_reported(natural_run, tmp_path):
    """resize to the cache size, then the centre crop: what evaluate saw from the cache."""
    saved = torch.load(natural_run / "model.pt", weights_only=True)
    assert (saved["image_size"], saved["cache_size"], saved["resize"]) == (32, 37, "crop")
    assert_matches_evaluate(natural_run / "model.pt", natural_run / "data", natural_run, tmp_path)


def test_large_jpegs_are_prepared_exactly_as_the_cache_holds_them(tmp_path):
    """Preprocess decodes a JPEG at least twice the cache size reduced (IMREAD_REDUCED_*); predict
    must see the same pixels, or its answers drift from evaluate's on real photos."""
    from cvpipe.augment import center_crop
    from cvpipe.predict import _prepare, read_checked

    make_dataset(tmp_path / "data", images_per_class=4, size=256, seed=0, image_format="jpg")
    ratios = {"train": 0.5, "val": 0.25, "test": 0.25}
    write_index(tmp_path / "data", tmp_path / "manifest.csv", tmp_path / "bad.csv", ratios, seed=0)
    preprocess(tmp_path / "manifest.csv", tmp_path / "data", tmp_path / "cache", size=37)
    cached = center_crop(np.load(tmp_path / "cache" / "test_images.npy"), 32)
    prepare = _prepare(32, 37, "crop")
    rows = split_rows(read_manifest(tmp_path / "manifest.csv"), "test")
    for row, expected in zip(rows, cached, strict=True):
        data = read_checked(tmp_path / "data" / row["path"])
        assert not isinstance(data, str), data
        np.testing.assert_array_equal(prepare(data), expected, err_msg=row["path"])


def write_bad_and_good(folder: Path, data: Path) -> dict[str, Path]:
    """Two good images and four bad ones (a hidden file too, which is no input at all)."""
    folder.mkdir()
    good = sorted(data.rglob("*.png"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    png = good[0].read_bytes()
    jpeg = cv2.imencode(".jpg", cv2.imread(str(good[0])))[1].tobytes()
    bad = {
        "cut.png": png[: len(png) // 2],
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "notes.png": b"not an image, just text\n",
    }
    for name, data_bytes in bad.items():
        (folder / name).write_bytes(data_bytes)
    (folder / ".DS_Store").write_bytes(b"\0")
    return {"good": [folder / p.name for p in good], "bad": [folder / n for n in bad]}


def test_bad_files_fail_naming_each_or_are_skipped(letterbox_run, tmp_path, capsys):
    files = write_bad_and_good(tmp_path / "in", letterbox_run / "data")
    model, out = letterbox_run / "model.pt", tmp_path / "p.csv"
    assert cvpipe("--model", model, "--device", "cpu", "--out", out, tmp_path / "in") == 1
    err = capsys.readouterr().err
    assert "4 input file(s)" in err and "nothing was written" in err
    reasons = ["truncated PNG", "truncated JPEG", "empty", "not an"]
    for path, reason in zip(files["bad"], reasons, strict=True):
        assert f"{path}: {reason}" in err
    assert not out.exists()

    args = ["--on-bad-file", "skip", "--bad-out", tmp_path / "bad.csv", "--out", out]
    assert cvpipe("--model", model, "--device", "cpu", *args, tmp_path / "in") == 0
    err = capsys.readouterr().err
    assert [r["path"] for r in read_csv(out)] == [str(p) for p in files["good"]]
    assert [r["path"] for r in read_csv(tmp_path / "bad.csv")] == sorted(map(str, files["bad"]))
    for path in files["bad"]:
        assert f"skipped {path}:" in err


def test_folders_recurse_and_lists_resolve_from_their_folder(letterbox_run, tmp_path, capsys):
    originals = sorted((letterbox_run / "data").rglob("*.png"))
    tree = tmp_path / "tree"
    for rel, source in zip(
        ["b.png", "a/z.png", "a/b/c.png", ".hidden/x.png", "a/.y.png"], originals, strict=False
    ):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tree / rel)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "more.txt").write_text(f"# two more\n\n../tree/b.png\n{originals[-1]}\n")
    model = letterbox_run / "model.pt"
    assert cvpipe("--model", model, "--device", "cpu", tree, f"@{lists / 'more.txt'}") == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["path", "predicted", "top_k", *(f"p_{c}" for c in CLASSES)]
    assert [r[0] for r in rows[1:]] == [
        *(str(tree / rel) for rel in ["a/b/c.png", "a/z.png", "b.png"]),
        str(lists / "../tree/b.png"),
        str(originals[-1]),
    ]
    for _, predicted, top_k, *probs in rows[1:]:
        pairs = [pair.split(":") for pair in top_k.split(";")]
        assert len(pairs) == 4 and pairs[0][0] == predicted  # top 5 of 4 classes: all 4
        values = [float(v) for _, v in pairs]
        assert values == sorted(values, reverse=True)
        assert dict(zip(CLASSES, map(float, probs), strict=True)) == {c: float(v) for c, v in pairs}
        assert sum(map(float, probs)) == pytest.approx(1, abs=1e-4)
    assert cvpipe("--model", model, "--device", "cpu", "--top-k", "2", tree / "b.png") == 0
    top_k = next(csv.DictReader(capsys.readouterr().out.splitlines()))["top_k"]
    assert top_k.count(":") == 2


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    return path


def test_torchvision_model_with_default_weights_names_imagenet_classes(
    image, tmp_path, monkeypatch, capsys
):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    # No network: a random state dict where the download would land (the cache is not re-hashed).
    assert cvpipe("--model", "resnet18", "--weights", "DEFAULT", image) == 1
    err = capsys.readouterr().err
    assert str(cached) in err and weights.url in err

    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    assert cvpipe("--model", "resnet18", "--weights", "DEFAULT", "--device", "cpu", image) == 0
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    categories = weights.meta["categories"]
    assert list(row)[3:] == [f"p_{c}" for c in categories] and len(categories) == 1000
    top = [pair.rsplit(":", 1)[0] for pair in row["top_k"].split(";")]
    assert len(top) == 5 and set(top) <= set(categories) and top[0] == row["predicted"]


def test_torchvision_model_with_a_state_dict_file_names_class_indices(image, tmp_path, capsys):
    weights = tmp_path / "three_classes.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    assert cvpipe("--model", "resnet18", "--weights", weights, "--device", "cpu", image) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "path,predicted,top_k,p_0,p_1,p_2"


def test_runs_without_snakemake_installed(letterbox_run, image, tmp_path):
    code = (
        "import sys; sys.modules['snakemake'] = None\n"
        "from cvpipe.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "p.csv"
    args = ["predict", "--model", letterbox_run / "model.pt", "--out", out, image]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in read_csv(out)] == [str(image)]


@pytest.mark.slow
def test_workflow_stage_is_off_by_default_and_follows_image_content(tiny_run_copy, tmp_path):
    work = tiny_run_copy
    assert "predict" not in planned_jobs(work, "--forceall")
    files = write_bad_and_good(work / "new", work / "data" / "surface-defects")
    (work / "new" / "sub").mkdir()
    shutil.copy(files["good"][0], work / "new" / "sub" / "copy.png")
    config = tmp_path / "predict.yaml"
    config.write_text("predict:\n  images: new\n")
    configs = [*CONFIGS, config]
    assert planned_jobs(work, configfiles=configs) == {"predict": len(EXPERIMENTS), "all": 1}
    snakemake(work, configfiles=configs)
    for experiment in EXPERIMENTS:
        folder = work / "results" / experiment / "predict"
        rows = read_csv(folder / "predictions.csv")
        assert [r["path"] for r in rows] == [
            *(f"new/{p.name}" for p in files["good"]),
            "new/sub/copy.png",
        ]
        assert len(read_csv(folder / "bad_files.csv")) == len(files["bad"])
    os.utime(files["good"][1])  # new mtime, same bytes: nothing to do
    assert planned_jobs(work, configfiles=configs) == {}
    files["good"][1].write_bytes(files["good"][0].read_bytes())  # new bytes: predict again
    assert planned_jobs(work, configfiles=configs) == {"predict": len(EXPERIMENTS), "all": 1}


@pytest.mark.parametrize("name", ["letterbox_run", "natural_run"])
def test_onnx_export_predicts_what_the_model_file_does(name, request, tmp_path):
    from cvpipe.export import export

    staged = request.getfixturevalue(name)
    export(staged / "model.pt", tmp_path / "export")
    folder = staged / "data"
    for model, out in [
        (staged / "model.pt", "pt.csv"),
        (tmp_path / "export" / "model.onnx", "onnx.csv"),
    ]:
        assert cvpipe("--model", model, "--device", "cpu", "--out", tmp_path / out, folder) == 0
    torch_rows, onnx_rows = read_csv(tmp_path / "pt.csv"), read_csv(tmp_path / "onnx.csv")
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    for got, want in zip(onnx_rows, torch_rows, strict=True):
        for c in CLASSES:
            assert float(got[f"p_{c}"]) == pytest.approx(float(want[f"p_{c}"]), abs=1e-4)
