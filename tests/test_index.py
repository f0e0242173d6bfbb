"""Indexing: bad files, colour conversions, splits, and clear errors for unusable data."""

import csv

import cv2
import numpy as np
import pytest

from cvpipe.decode import decode_rgb8
from cvpipe.errors import CvpipeError
from cvpipe.index import build_index, min_class_size, write_index

RATIOS = {"train": 0.5, "val": 0.25, "test": 0.25}


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def noise(h=12, w=10, channels=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    high = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, high, size=shape, endpoint=True).astype(dtype)


def make_data(root, per_class=4, classes=("ok", "scratch")):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png(noise(seed=100 * c + i)))
    return root


def test_manifest_rows_and_split(tmp_path):
    root = make_data(tmp_path / "data", per_class=8)
    rows, bad = build_index(root, RATIOS, seed=0)
    assert not bad
    assert len(rows) == 16
    assert {r["class"] for r in rows} == {"ok", "scratch"}
    row = rows[0]
    assert (row["width"], row["height"], row["channels"], row["bit_depth"]) == (10, 12, 3, 8)
    assert len(row["sha256"]) == 64
    for cls in ("ok", "scratch"):
        counts = [
            sum(r["class"] == cls and r["split"] == s for r in rows)
            for s in ("train", "val", "test")
        ]
        assert counts == [4, 2, 2]
    # Deterministic, and another seed gives another split.
    assert build_index(root, RATIOS, seed=0)[0] == rows
    assert [r["split"] for r in build_index(root, RATIOS, seed=1)[0]] != [r["split"] for r in rows]


def test_adding_an_image_keeps_most_assignments(tmp_path):
    root = make_data(tmp_path / "data", per_class=40)
    before = {r["path"]: r["split"] for r in build_index(root, RATIOS, seed=0)[0]}
    (root / "ok" / "extra.png").write_bytes(png(noise(seed=999)))
    after = {r["path"]: r["split"] for r in build_index(root, RATIOS, seed=0)[0]}
    moved = [p for p in before if before[p] != after[p]]
    assert len(moved) <= 3


def test_bad_files_fail_with_one_message_naming_each(tmp_path):
    root = make_data(tmp_path / "data")
    good = png(noise(seed=7))
    jpeg = cv2.imencode(".jpg", noise(seed=8))[1].tobytes()
    (root / "ok" / "empty.png").write_bytes(b"")
    (root / "ok" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "scratch" / "cut.jpg").write_bytes(jpeg[:-40])
    (root / "scratch" / "notes.txt").write_text("not an image")
    with pytest.raises(CvpipeError) as err:
        build_index(root, RATIOS, seed=0)
    message = str(err.value)
    assert "4 of 12 files" in message
    for name, reason in [
        ("ok/empty.png", "empty file"),
        ("ok/cut.png", "truncated PNG"),
        ("scratch/cut.jpg", "truncated JPEG"),
        ("scratch/notes.txt", "not an image"),
    ]:
        line = next(line for line in message.splitlines() if name in line)
        assert reason in line
    assert "on_bad_image: skip" in message


def test_skip_lists_bad_files_and_carries_on(tmp_path):
    root = make_data(tmp_path / "data")
    (root / "ok" / "empty.png").write_bytes(b"")
    manifest, report = tmp_path / "manifest.csv", tmp_path / "bad.csv"
    rows = write_index(root, manifest, report, RATIOS, seed=0, on_bad_image="skip")
    assert len(rows) == 8
    with open(report) as f:
        bad = list(csv.DictReader(f))
    assert bad == [{"path": "ok/empty.png", "reason": "empty file (0 bytes)"}]
    with open(manifest) as f:
        assert len(list(csv.DictReader(f))) == 8


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (noise(channels=1), lambda src: np.repeat(src[:, :, None], 3, axis=2)),  # gray -> copied
        (noise(channels=4), lambda src: src[:, :, 2::-1]),  # BGRA -> RGB, alpha dropped
        (
            noise(channels=3, dtype=np.uint16),
            lambda src: (src[:, :, ::-1].astype(np.uint32) * 255 + 32767) // 65535,
        ),
        (
            noise(channels=1, dtype=np.uint16),
            lambda src: np.repeat(
                ((src.astype(np.uint32) * 255 + 32767) // 65535)[:, :, None], 3, 2
            ),
        ),
    ],
    ids=["gray", "rgba", "rgb16", "gray16"],
)
def test_conversion_rule_to_rgb8(image, expected):
    out = decode_rgb8(png(image))
    assert out.dtype == np.uint8
    assert out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, expected(image).astype(np.uint8))


def test_palette_png_is_expanded(tmp_path):
    from PIL import Image

    colours = noise(h=2, w=3, seed=3).reshape(-1, 3)
    indices = np.random.default_rng(0).integers(0, 6, size=(12, 10)).astype(np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(colours.flatten().tolist())
    path = tmp_path / "palette.png"
    img.save(path)
    np.testing.assert_array_equal(decode_rgb8(path.read_bytes()), colours[indices])


def test_manifest_records_source_format(tmp_path):
    root = tmp_path / "data"
    for name, kind in {"a": {"channels": 1}, "b": {"channels": 4, "dtype": np.uint16}}.items():
        (root / name).mkdir(parents=True)
        for i in range(4):  # distinct images: identical copies would count as one
            (root / name / f"{i}.png").write_bytes(png(noise(seed=i, **kind)))
    rows, _ = build_index(root, RATIOS, seed=0)
    assert {(r["class"], r["channels"], r["bit_depth"]) for r in rows} == {
        ("a", 1, 8),
        ("b", 4, 16),
    }


def test_empty_class_folder_is_named(tmp_path):
    root = make_data(tmp_path / "data")
    (root / "dent").mkdir()
    with pytest.raises(CvpipeError, match=r"no usable images: .*dent"):
        build_index(root, RATIOS, seed=0)


def test_single_class_is_an_error(tmp_path):
    root = make_data(tmp_path / "data", classes=("ok",))
    with pytest.raises(CvpipeError, match="only the class 'ok'"):
        build_index(root, RATIOS, seed=0)


def test_class_too_small_for_split_is_named(tmp_path):
    root = make_data(tmp_path / "data", per_class=8)
    for path in sorted((root / "scratch").iterdir())[2:]:
        path.unlink()
    assert min_class_size(RATIOS) == 3
    with pytest.raises(CvpipeError, match=r"'scratch' \(2\).*at least 3 images"):
        build_index(root, RATIOS, seed=0)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(CvpipeError, match=r"data\.root .*nowhere.* is not a folder"):
        build_index(tmp_path / "nowhere", RATIOS, seed=0)


def full_verdict(data: bytes) -> str:
    """What the index said before it decoded plain JPEGs reduced: full decode + Pillow's read."""
    from cvpipe.decode import BadImage, check_stream, decode

    try:
        image = decode(data)
        check_stream(data)
    except BadImage as exc:
        return str(exc)
    return f"{image.shape[1]}x{image.shape[0]}x{1 if image.ndim == 2 else image.shape[2]}"


def test_jpeg_check_without_full_decoding_gives_the_full_decodes_verdicts():
    """Cut JPEGs (with and without an end marker), bytes flipped mid-stream, grey and colour:
    the index's reduced check (`check_jpeg`) finds the same problems and the same sizes."""
    from cvpipe.decode import BadImage, check_jpeg

    rng = np.random.default_rng(3)
    verdicts = set()
    for seed in range(12):
        image = cv2.GaussianBlur(
            noise(96, 80, channels=1 if seed % 3 == 0 else 3, seed=seed), (5, 5), 2
        )
        good = cv2.imencode(".jpg", image)[1].tobytes()
        sos = good.index(b"\xff\xda")
        cut = int(rng.integers(sos + 20, len(good) - 10))
        flipped = bytearray(good)
        middle = int(rng.integers(sos + 20, len(good) - 120))
        for i in range(middle, middle + 100):
            flipped[i] ^= 0xA5
        for data in (good, good[:cut], good[:cut] + b"\xff\xd9", bytes(flipped)):
            try:
                facts = check_jpeg(data)
                assert facts is not None
                fast = f"{facts[0]}x{facts[1]}x{facts[2]}"
            except BadImage as exc:
                fast = str(exc)
            assert fast == full_verdict(data)
            verdicts.add(fast.split(" (")[0])
    assert {"80x96x1", "80x96x3", "truncated JPEG", "corrupt JPEG data"} <= verdicts
