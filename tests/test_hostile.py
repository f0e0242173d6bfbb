"""Hostile inputs and faults, one test per case (issue 13): each asserts the sentence the user
sees (the file, the reason, what to do) or the changed behaviour, and that nothing was lost.

The sections follow the issue's list; the next case is one more function in its section.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import resource
import shutil
import signal

import cv2
import numpy as np
import pytest
import torch
from helpers import CONFIGS, REPO, snakemake

from cvpipe import atomic, checkpoint, datatree
from cvpipe.config import coerce_strings, config_errors, split_errors
from cvpipe.errors import CvpipeError
from cvpipe.evaluate import load_model
from cvpipe.index import build_index, write_index
from cvpipe.modelnames import model_errors
from cvpipe.models import build_model
from cvpipe.preprocess import preprocess
from cvpipe.train import TrainConfig, train

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
RATIOS = {"train": 0.5, "val": 0.25, "test": 0.25}


def png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def make_data(root, per_class=8, classes=("ok", "scratch")):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png(100 * c + i))
    return root


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- Silent wrong results --------------------------------------------------------------------
# 1. The same image twice in a class: every copy in one split, listed in duplicates.csv.
def test_copies_of_an_image_share_one_split(tmp_path, caplog):
    root = make_data(tmp_path / "data")
    for i in range(7):
        (root / "ok" / f"copy{i}.png").write_bytes(png(999))
    out = tmp_path / "out"
    rows = write_index(
        root, out / "m.csv", out / "bad.csv", RATIOS, seed=0, duplicates_path=out / "dup.csv"
    )
    copies = {r["path"]: r["split"] for r in rows if r["path"].startswith("ok/copy")}
    assert len(copies) == 7 and len(set(copies.values())) == 1
    dups = read_csv(out / "dup.csv")
    assert sorted(d["path"] for d in dups) == sorted(copies)
    assert {d["split"] for d in dups} == set(copies.values())
    assert "7 files are copies of another file in their class" in caplog.text
    # The shares count distinct images: 9 in ok (5 train, 2 val, 2 test).
    distinct = {(r["sha256"], r["split"]) for r in rows if r["class"] == "ok"}
    assert sorted(s for _, s in distinct).count("train") == 5
    assert [s for _, s in distinct].count("test") == 2


# 2. The same bytes in two classes: the index stops, naming both paths.
def test_same_bytes_in_two_classes_stop_the_index(tmp_path):
    root = make_data(tmp_path / "data")
    (root / "scratch" / "same.png").write_bytes((root / "ok" / "3.png").read_bytes())
    (root / "scratch" / "also.png").write_bytes((root / "ok" / "5.png").read_bytes())
    with pytest.raises(CvpipeError) as err:
        build_index(root, RATIOS, seed=0)
    message = str(err.value)
    assert message.startswith("2 pair(s) of files")
    assert f"{root / 'ok/3.png'} (ok) = {root / 'scratch/same.png'} (scratch)" in message
    assert f"{root / 'ok/5.png'} (ok) = {root / 'scratch/also.png'} (scratch)" in message
    assert "data.on_conflicting_labels: drop" in message
    out = tmp_path / "out"
    rows = write_index(
        root, out / "m.csv", out / "bad.csv", RATIOS, seed=0, on_conflicting_labels="drop"
    )
    assert len(rows) == 14
    bad = {b["path"]: b["reason"] for b in read_csv(out / "bad.csv")}
    assert sorted(bad) == ["ok/3.png", "ok/5.png", "scratch/also.png", "scratch/same.png"]
    assert bad["ok/3.png"].startswith("same bytes in classes ok, scratch (contradictory labels")


# 3. A JPEG corrupted mid-stream is a bad image.
def test_jpeg_corrupted_mid_stream_is_a_bad_image(tmp_path):
    root = make_data(tmp_path / "data")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    (root / "ok" / "good.jpg").write_bytes(data)
    sos = data.index(b"\xff\xda")
    middle = (sos + len(data)) // 2
    for i in range(middle - 100, middle + 100):  # 200 bytes of the entropy-coded data
        data[i] ^= 0xA5
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED) is not None
    (root / "ok" / "corrupt.jpg").write_bytes(data)
    with pytest.raises(CvpipeError) as err:
        build_index(root, RATIOS, seed=0)
    assert str(err.value).startswith("1 of 18 files")
    assert f"{root / 'ok/corrupt.jpg'}: corrupt JPEG data (" in str(err.value)


# --- Tracebacks where a sentence belongs: weights, checkpoints, models -----------------------
# 4. A text file as `weights`.
def test_text_file_as_weights_is_one_sentence_naming_it(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(CvpipeError) as err:
        build_model("resnet18", 2, weights=str(text))
    msg = str(err.value)
    assert str(text) in msg and "not a readable PyTorch file" in msg
    assert "`weights`" in msg and "\n" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


# 5. A malicious pickle as `weights`: refused without the "weights_only=False" advice.
class _Payload:
    """Unpickling this runs `os.system`: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_as_weights_is_refused_without_the_unsafe_advice(tmp_path):
    marker, evil = tmp_path / "payload-ran", tmp_path / "evil.pt"
    torch.save({"fc.weight": _Payload(marker)}, evil)
    with pytest.raises(CvpipeError) as err:
        build_model("resnet18", 2, weights=str(evil))
    msg = str(err.value)
    assert not marker.exists()
    assert str(evil) in msg and "not a plain state dict or checkpoint" in msg
    assert "will not unpickle it" in msg and "on a machine you trust" in msg
    # PyTorch's own advice ("Re-running `torch.load` with `weights_only` set to `False` will
    # likely succeed") is gone: weights_only=False appears only in the conversion recipe.
    assert "Re-running" not in msg and "likely succeed" not in msg
    assert msg.count("weights_only=False") == 1
    assert err.value.__cause__ is None and err.value.__suppress_context__


# 6. A truncated last.pt: set aside as last.pt.corrupt, training starts afresh.
def _train(tiny_cache, out, epochs=1):
    cfg = TrainConfig.from_dict(
        {"model": "resnet18", "image_size": 32, "epochs": epochs, "batch_size": 8}
    )
    paths = (out / "model.pt", out / "history.csv", out / "provenance.json")
    return train(cfg, tiny_cache / "cache", *paths, threads=2)


def test_truncated_last_checkpoint_is_set_aside_and_training_starts_afresh(
    tiny_cache, tmp_path, caplog
):
    _train(tiny_cache, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # as a crash or a full disk mid-write would leave it
    with caplog.at_level(logging.WARNING, logger="cvpipe.checkpoint"):
        metrics = _train(tiny_cache, tmp_path)
    corrupt = tmp_path / "checkpoints" / "last.pt.corrupt"
    assert corrupt.read_bytes() == data[: len(data) // 2]
    assert checkpoint.load(last)["epoch"] == 0 and metrics["epoch"] == 1  # fresh and complete
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(last) in warning and str(corrupt) in warning and "from scratch" in warning


# 7. A garbage model.pt: evaluate names it and says to rerun training.
@pytest.mark.parametrize("content", [b"\x00garbage" * 100, b""], ids=["garbage", "empty"])
def test_garbage_model_file_is_named_with_the_rerun_command(tmp_path, content):
    model = tmp_path / "train" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(content)
    with pytest.raises(CvpipeError) as err:
        load_model(model, torch.device("cpu"))
    msg = str(err.value)
    assert str(model) in msg and "snakemake --forcerun train" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_state_dict_as_model_file_is_named_with_the_rerun_command(tmp_path):
    model = tmp_path / "model.pt"
    checkpoint.save(model, build_model("resnet18", 2).state_dict())
    with pytest.raises(CvpipeError, match=r"not a model file written by cvpipe train.*forcerun"):
        load_model(model, torch.device("cpu"))


# 8. A full disk: the file, the bytes needed and the free space.
def test_full_disk_refuses_a_checkpoint_before_writing_and_keeps_the_old_one(tmp_path, monkeypatch):
    """A full disk is simulated by replacing `cvpipe.atomic.free_bytes` (the one place that
    asks the filesystem): a small tmpfs needs a mount, which needs root (CAP_SYS_ADMIN) that CI
    does not have, and no unprivileged size limit yields a real ENOSPC."""
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"model": {"w": torch.zeros(4)}})
    old = path.read_bytes()
    monkeypatch.setattr(atomic, "free_bytes", lambda _path: 123_456)
    with pytest.raises(CvpipeError) as err:
        checkpoint.save(path, build_model("resnet18", 2).state_dict())
    msg = str(err.value)
    assert str(path) in msg and "not enough disk space" in msg
    assert "123,456 bytes" in msg and "MiB" in msg and "are free" in msg
    assert path.read_bytes() == old and sorted(tmp_path.iterdir()) == [path]


def test_full_disk_refuses_the_preprocess_cache_before_writing(tiny_cache, tmp_path, monkeypatch):
    """Simulated as above: `free_bytes` reports 1 MiB; 48 images of 32 px need a little more."""
    monkeypatch.setattr(atomic, "free_bytes", lambda _path: 2**20)
    out = tmp_path / "cache"
    with pytest.raises(CvpipeError, match="not enough disk space") as err:
        preprocess(tiny_cache / "manifest.csv", tiny_cache / "data", out, size=32)
    assert str(out) in str(err.value) and "1,048,576 bytes" in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_a_write_that_runs_out_of_room_is_the_same_sentence_and_keeps_the_old_file(tmp_path):
    """A real failed write, with RLIMIT_FSIZE (settable without privileges, restored after):
    it gives EFBIG/SIGXFSZ, not ENOSPC, but torch.save reports both as the same
    "unexpected pos" RuntimeError, which is what cvpipe recognises; a true ENOSPC would need a
    small filesystem, i.e. a mount (root). The limit is well above the old file's size."""
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.zeros(4)}})
    old = path.read_bytes()
    big = {"model": {"w": torch.zeros(2**20)}}  # 4 MiB
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills pytest
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))
    try:
        with pytest.raises(CvpipeError) as err:
            checkpoint.save(path, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    msg = str(err.value)
    assert str(path) in msg and "needs about 5.0 MiB" in msg and "are free" in msg
    assert "unexpected pos" not in msg
    assert path.read_bytes() == old and sorted(tmp_path.iterdir()) == [path]  # no temp file left


# --- Tracebacks where a sentence belongs: data tree and sizes --------------------------------
# 9. A symlink loop or a dangling symlink in a class folder: a bad file, in both modes.
def _symlinks(root):
    (root / "ok" / "loop.png").symlink_to("loop.png")
    (root / "ok" / "dangling.png").symlink_to("gone.png")
    (root / "ok" / "back").symlink_to("..")  # a folder link back above itself
    return {
        "ok/loop.png": "symlink loop (loop.png -> loop.png)",
        "ok/dangling.png": "dangling symlink (its target gone.png does not exist)",
        "ok/back": "symlink loop: a link back to a folder above it (back -> ..)",
    }


def test_symlink_loops_and_dangling_links_are_bad_files(tmp_path):
    root = make_data(tmp_path / "data")
    expected = _symlinks(root)
    # The fingerprint (computed while Snakemake builds the job graph) does not raise.
    first = datatree.tree_fingerprint(root, tmp_path / "cache.json")
    assert datatree.tree_fingerprint(root, tmp_path / "cache.json") == first
    with pytest.raises(CvpipeError) as err:
        build_index(root, RATIOS, seed=0)
    message = str(err.value)
    assert message.startswith("3 of 19 files")
    for rel, reason in expected.items():
        assert f"{root / rel}: {reason}" in message
    out = tmp_path / "out"
    rows = write_index(root, out / "m.csv", out / "bad.csv", RATIOS, seed=0, on_bad_image="skip")
    assert len(rows) == 16
    bad = {b["path"]: b["reason"] for b in read_csv(out / "bad.csv")}
    assert bad == expected


# 10. image_size too large: the schema's maximum; the cache size checked against free disk.
def test_a_huge_image_size_stops_at_the_schema():
    config = {"container": "x", "train": {"image_size": 100000}, "experiments": {"a": {}}}
    assert config_errors(config, SCHEMA) == [
        "train.image_size: 100000 is greater than the maximum of 4096"
    ]


def test_a_cache_larger_than_the_free_disk_is_refused_before_it_is_opened(tiny_cache, tmp_path):
    from cvpipe.preprocess import preprocess

    out = tmp_path / "cache" / "4096px"
    free = shutil.disk_usage(tmp_path).free
    size = 4096
    while 48 * size * size * 3 <= free:  # the tiny set's 48 images; a size this disk lacks
        size *= 2
    with pytest.raises(CvpipeError) as caught:
        preprocess(tiny_cache / "manifest.csv", tiny_cache / "data", out, size=size)
    message = str(caught.value)
    assert f"not enough disk space for {out}" in message and "are free there" in message
    assert f"the {size}px cache of 48 images" in message and "lower train.image_size" in message
    assert not out.exists()


# --- Surprises -------------------------------------------------------------------------------
# 11. A GIF: its first frame, or "unsupported format".
def test_a_gif_is_read_as_its_first_frame_and_other_formats_are_named_unsupported(tmp_path):
    from PIL import Image

    from cvpipe.decode import BadImage, decode_rgb8

    frames = [np.full((10, 12, 3), value, np.uint8) for value in (200, 30)]
    gif = tmp_path / "a.gif"
    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=[Image.fromarray(frames[1])])
    image = decode_rgb8(gif.read_bytes())
    assert image.shape == (10, 12, 3) and abs(int(image.mean()) - 200) <= 2  # the first frame
    with pytest.raises(BadImage, match=r"unsupported format \(cvpipe reads PNG, JPEG, .*GIF"):
        decode_rgb8(b"P6\n2 2\n255\n" + bytes(12))  # a PPM: OpenCV could, cvpipe does not


# 12. Numbers in --config: string numbers and booleans coerced where the schema wants them.
def test_config_strings_become_the_numbers_and_booleans_the_schema_wants():
    given = {
        "train": {"epochs": "5", "lr": "1e-3", "compile": "true", "model": "1", "amp": "off"},
        "experiments": {"x": {"image_size": "48", "seed": "many", "augment": {"hflip": "False"}}},
    }
    assert coerce_strings(given, SCHEMA) == {
        "train": {"epochs": 5, "lr": 0.001, "compile": True, "model": "1", "amp": "off"},
        "experiments": {"x": {"image_size": 48, "seed": "many", "augment": {"hflip": False}}},
    }


def test_a_nested_number_in_snakemake_config_reaches_the_train_job(tmp_path):
    target = "results/resnet18/train/model.pt"
    override = 'train={"epochs": 5, "channels_last": "false"}'
    out = snakemake(tmp_path, "-n", "-p", target, "--config", override).stdout
    settings = json.loads(re.search(r"train --config '(\{.*?\})'", out).group(1))
    assert settings["epochs"] == 5 and settings["channels_last"] is False
    assert settings["image_size"] == 32  # the rest of tiny.yaml's train stays


# 13. amp fp16/bf16 on a CPU: no scheduler warning; one log line that it is slow.
def test_fp16_on_a_cpu_steps_the_schedule_only_with_the_optimizer(tiny_cache, caplog, recwarn):
    from train_steps import build, fit_steps

    with caplog.at_level(logging.WARNING, logger="cvpipe"):
        parts, env = build(tiny_cache / "cache", "cpu", amp="fp16")
    assert caplog.text.count("amp fp16 on a CPU runs slower than float32") == 1
    steps = fit_steps(parts, env, 4)
    assert not steps[0].weights_changed  # 2**16 overflows here: the first step is skipped
    assert parts.scheduler.last_epoch == sum(s.weights_changed for s in steps)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_amp_off_steps_the_schedule_every_step_and_says_nothing(tiny_cache, caplog):
    from train_steps import build, fit_steps

    with caplog.at_level(logging.WARNING, logger="cvpipe"):
        parts, env = build(tiny_cache / "cache", "cpu", amp="off")
    fit_steps(parts, env, 2)
    assert parts.scheduler.last_epoch == 2 and "slower" not in caplog.text


# 14. Non-Latin class names in figures.
def test_class_names_no_font_can_draw_are_numbered_with_one_warning(caplog):
    from matplotlib import font_manager

    from cvpipe.figures import class_labels

    assert class_labels(["ok", "dent"]) == ["ok", "dent"]
    if any("Noto Sans CJK" in f.name for f in font_manager.fontManager.ttflist):
        assert class_labels(["ok", "傷"]) == ["ok", "傷"]  # drawn with the CJK font
        return
    with caplog.at_level(logging.WARNING, logger="cvpipe"):
        assert class_labels(["ok", "傷"]) == ["0", "1"]
        assert class_labels(["ok", "傷"]) == ["0", "1"]
    assert caplog.text.count("number the classes (0 = ok, 1 = 傷)") == 1


# 15. An unknown model and split ratios not summing to 1: caught when the config loads.
def test_an_unknown_model_is_named_with_its_experiments_and_close_names():
    config = {"train": {"model": "resnt18"}, "experiments": {"a": {}, "b": {"model": "resnet50"}}}
    assert model_errors(config) == [
        "train.model: 'resnt18' (experiment 'a') is not a torchvision classification model "
        "(did you mean 'resnet18', 'resnet152', 'resnet101'?): use a name from "
        "torchvision.models.list_models()."
    ]
    config["train"]["model"] = "vit_b_16"  # untested but torchvision's
    assert model_errors(config) == []


def test_split_shares_must_add_up_to_one():
    assert split_errors({"data": {"split": {"train": 0.7, "val": 0.15, "test": 0.15}}}) == []
    assert split_errors({"data": {"split": {"train": 0.9, "val": 0.15, "test": 0.15}}}) == [
        "data.split: train 0.9 + val 0.15 + test 0.15 = 1.2, but every image goes to exactly one "
        "split: change the shares so that they add up to 1."
    ]


def test_dry_run_stops_on_a_bad_model_and_split_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  split: {train: 0.8}\nexperiments:\n  big: {model: resnet5O}\n")
    proc = snakemake(tmp_path, "-n", configfiles=[*CONFIGS, bad], check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert "data.split: train 0.8 + val 0.25 + test 0.25 = 1.3" in output
    assert "experiments.big.model: 'resnet5O' (experiment 'big')" in output
