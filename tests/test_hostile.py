"""Hostile inputs and faults, one test per case (issue 13): each asserts the sentence the user
sees (the file, the reason, what to do) or the changed behaviour, and that nothing was lost.

The sections follow the issue's list; the next case is one more function in its section.
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
from helpers import CONFIGS, REPO, snakemake

from cvpipe.config import coerce_strings, config_errors, split_errors
from cvpipe.errors import CvpipeError
from cvpipe.modelnames import model_errors

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# --- Silent wrong results --------------------------------------------------------------------
# 1. The same image twice in a class: every copy in one split, listed in duplicates.csv.
# 2. The same bytes in two classes: the index stops, naming both paths.
# 3. A JPEG corrupted mid-stream is a bad image.


# --- Tracebacks where a sentence belongs: weights, checkpoints, models -----------------------
# 4. A text file as `weights`.
# 5. A malicious pickle as `weights`: refused without the "weights_only=False" advice.
# 6. A truncated last.pt: set aside as last.pt.corrupt, training starts afresh.
# 7. A garbage model.pt: evaluate names it and says to rerun training.
# 8. A full disk: the file, the bytes needed and the free space.


# --- Tracebacks where a sentence belongs: data tree and sizes --------------------------------
# 9. A symlink loop or a dangling symlink in a class folder: a bad file, in both modes.
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
    assert f"needs {48 * size * size * 3:,} bytes" in message and str(out) in message
    assert f"{tmp_path} has " in message and "lower train.image_size" in message
    assert not out.exists()


# --- Surprises -------------------------------------------------------------------------------
# 11. A GIF: its first frame, or "unsupported format".
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
