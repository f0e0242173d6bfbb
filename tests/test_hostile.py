"""Hostile inputs and faults, one test per case (issue 13): each asserts the sentence the user
sees (the file, the reason, what to do) or the changed behaviour, and that nothing was lost.

The sections follow the issue's list; the next case is one more function in its section.
"""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from cvpipe import datatree
from cvpipe.errors import CvpipeError
from cvpipe.index import build_index, write_index

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
# 5. A malicious pickle as `weights`: refused without the "weights_only=False" advice.
# 6. A truncated last.pt: set aside as last.pt.corrupt, training starts afresh.
# 7. A garbage model.pt: evaluate names it and says to rerun training.
# 8. A full disk: the file, the bytes needed and the free space.


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


# --- Surprises -------------------------------------------------------------------------------
# 11. A GIF: its first frame, or "unsupported format".
# 12. Numbers in --config: string numbers and booleans coerced where the schema wants them.
# 13. amp fp16/bf16 on a CPU: no scheduler warning; one log line that it is slow.
# 14. Non-Latin class names in figures.
# 15. An unknown model and split ratios not summing to 1: caught when the config loads.
