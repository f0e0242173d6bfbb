"""Preprocessing: resize rules, the cache's contents and stats, and thread-count independence."""

import json

import cv2
import numpy as np
import pytest

from cvpipe.data import CacheSplit
from cvpipe.decode import decode_rgb8
from cvpipe.errors import CvpipeError
from cvpipe.index import read_manifest, split_rows
from cvpipe.preprocess import preprocess, resize_square


def test_crop_keeps_the_centre():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # the central 40 x 40 square is white, the sides black
    out = resize_square(image, 20, "crop")
    assert out.shape == (20, 20, 3)
    assert out.min() == 255


def test_letterbox_keeps_everything_and_pads_black():
    image = np.full((40, 80, 3), 200, np.uint8)
    out = resize_square(image, 20, "letterbox")
    assert out.shape == (20, 20, 3)
    assert (out[:5] == 0).all() and (out[-5:] == 0).all()  # 10 rows of image, padded above/below
    assert (out[5:15] == 200).all()


def test_cache_matches_decoding_each_image(tiny_cache):
    rows = read_manifest(tiny_cache / "manifest.csv")
    stats = json.loads((tiny_cache / "cache" / "stats.json").read_text())
    assert stats["classes"] == ["dent", "ok", "scratch", "stain"]
    assert stats["counts"] == {"train": 24, "val": 12, "test": 12}
    for split in ("train", "val", "test"):
        data = CacheSplit(tiny_cache / "cache", split)
        members = split_rows(rows, split)
        assert data.labels.tolist() == [r["label"] for r in members]
        for i in (0, len(members) - 1):
            raw = decode_rgb8((tiny_cache / "data" / members[i]["path"]).read_bytes())
            expected = cv2.resize(raw, (32, 32), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(data.images[i], expected)


def test_stats_are_train_mean_and_std(tiny_cache):
    stats = json.loads((tiny_cache / "cache" / "stats.json").read_text())
    train = np.load(tiny_cache / "cache" / "train_images.npy").astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], train.std(axis=(0, 1, 2)), rtol=1e-6)


def test_threads_do_not_change_the_cache(tiny_cache, tmp_path):
    preprocess(
        tiny_cache / "manifest.csv", tiny_cache / "data", tmp_path / "c4", size=32, threads=4
    )
    for name in ("train_images.npy", "test_labels.npy", "stats.json"):
        assert (tmp_path / "c4" / name).read_bytes() == (tiny_cache / "cache" / name).read_bytes()


def test_changed_original_is_caught(tiny_cache, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_cache / "data", data)
    victim = data / read_manifest(tiny_cache / "manifest.csv")[0]["path"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CvpipeError, match=f"{victim.name} changed since it was indexed"):
        preprocess(tiny_cache / "manifest.csv", data, tmp_path / "cache", size=32)


def test_mismatched_cache_is_a_clear_error(tiny_cache, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache / "cache", cache)
    np.save(cache / "val_labels.npy", np.zeros(3, np.int64))
    with pytest.raises(CvpipeError, match=r"holds 12 images but .*3 labels; rerun the preprocess"):
        CacheSplit(cache, "val")
