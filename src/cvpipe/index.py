"""Index stage: scan the data set, decode-check every image, split it, write the manifest.

The manifest (`manifest.csv`) is the data set's identity for every later stage: one row per usable
image with its path (relative to the data root), class, label, split, sha256, size and the
channel count and bit depth it was stored with. Later stages read images only through it.

Splits are stratified by class and deterministic: inside a class, files are ordered by
sha256(seed, relative path) and the first share goes to test, the next to val, the rest to train.
Adding one image moves at most a few others between splits, instead of reshuffling the class.
Identical files (same sha256) in a class are split as one: the group takes the place of its first
path (sorted), so every copy lands in the same split and no test image is also a training image;
the shares count distinct contents. Without duplicates this is the plain per-file order above.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import typing
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from cvpipe import atomic, datatree
from cvpipe.decode import BadImage, check_jpeg, check_stream, decode, to_rgb8
from cvpipe.errors import CvpipeError
from cvpipe.progress import Progress
from cvpipe.settings import OnBadImage, OnConflictingLabels

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = (
    "path", "class", "label", "split", "sha256", "width", "height", "channels", "bit_depth",
)  # fmt: skip
BAD_FIELDS = ("path", "reason")
DUPLICATE_FIELDS = ("sha256", "path", "class", "split")


@dataclass(frozen=True)
class Checked:
    """One scanned file: its metadata, or the reason it cannot be used."""

    class_name: str
    rel: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    channels: int = 0
    bit_depth: int = 0
    problem: str = ""


def _read_bytes(path: Path) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    problem = datatree.unreadable(path)
    if problem:
        return problem
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def read_image(path: Path) -> tuple[bytes, np.ndarray, np.ndarray] | str:
    """The file's bytes, its image as stored and as H x W x 3 uint8 RGB; or, for a bad file,
    why (the index's rules, which `cvpipe predict` applies to its inputs too)."""
    data = _read_bytes(path)
    if isinstance(data, str):
        return data
    decoded = _decoded(data)
    return decoded if isinstance(decoded, str) else (data, *decoded)


def _decoded(data: bytes) -> tuple[np.ndarray, np.ndarray] | str:
    """The image as stored and as RGB, or why the bytes are a bad image."""
    try:
        image = decode(data)
        check_stream(data)  # corruption that OpenCV decodes silently
        return image, to_rgb8(image)  # the conversion preprocessing applies must work
    except BadImage as exc:
        return str(exc)


def read_facts(path: Path) -> tuple[bytes, tuple[int, int, int, int]] | str:
    """The file's bytes and its (width, height, channels, bit depth) as stored, or why it is bad:
    `read_image`'s verdict, without decoding a plain JPEG at full resolution (`check_jpeg`)."""
    data = _read_bytes(path)
    if isinstance(data, str):
        return data
    try:
        facts = check_jpeg(data)
    except BadImage as exc:
        return str(exc)
    if facts is not None:
        return data, facts
    decoded = _decoded(data)
    if isinstance(decoded, str):
        return decoded
    image = decoded[0]
    channels = 1 if image.ndim == 2 else image.shape[2]
    return data, (image.shape[1], image.shape[0], channels, image.dtype.itemsize * 8)


def check_file(root: Path, class_name: str, path: Path) -> Checked:
    """Read, hash and check one file; never raises for a bad image."""
    rel = path.relative_to(root).as_posix()
    read = read_facts(path)
    if isinstance(read, str):
        return Checked(class_name, rel, problem=read)
    data, (width, height, channels, bit_depth) = read
    return Checked(
        class_name,
        rel,
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        channels=channels,
        bit_depth=bit_depth,
    )


def in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """`fn` over `items` on `pool`, results in order, at most `window` of them in flight: the
    memory held stays the same however many items there are (`Executor.map` submits them all)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        if len(pending) >= window:
            yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()


def split_counts(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """How many of `n` images go to val and test (rounded), the rest to train."""
    counts = {s: round(ratios[s] * n) for s in ("val", "test")}
    counts["train"] = n - counts["val"] - counts["test"]
    return counts


def min_class_size(ratios: dict[str, float]) -> int:
    """The smallest class size that gives every split at least one image."""
    n = 1
    while min(split_counts(n, ratios).values()) < 1:
        n += 1
    return n


def assign_splits(
    rels: list[str], ratios: dict[str, float], seed: int, sha256: dict[str, str] | None = None
) -> dict[str, str]:
    """Map each relative path of one class to a split (see the module docstring).

    With `sha256` (path -> content hash), paths of identical content share one split.
    """
    groups: dict[str, list[str]] = {}
    for rel in sorted(rels):
        groups.setdefault(sha256[rel] if sha256 else rel, []).append(rel)
    firsts = {members[0]: members for members in groups.values()}
    order = sorted(firsts, key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).hexdigest())
    counts = split_counts(len(order), ratios)
    names = ["test"] * counts["test"] + ["val"] * counts["val"] + ["train"] * counts["train"]
    return {rel: split for first, split in zip(order, names, strict=True) for rel in firsts[first]}


def _check_ratios(ratios: dict[str, float]) -> None:
    if set(ratios) != set(SPLITS) or any(r <= 0 for r in ratios.values()):
        raise CvpipeError(f"data.split needs positive train, val and test ratios, got {ratios}")
    if not math.isclose(sum(ratios.values()), 1.0, abs_tol=1e-6):
        raise CvpipeError(f"data.split ratios must add up to 1, got {sum(ratios.values()):.4g}")


def _format_bad(bad: list[Checked], root: Path) -> str:
    lines = [f"  {root / b.rel}: {b.problem}" for b in bad]
    return "\n".join(lines)


def build_index(
    root: str | Path,
    ratios: dict[str, float],
    seed: int,
    on_bad_image: OnBadImage = "fail",
    threads: int = 1,
    on_conflicting_labels: OnConflictingLabels = "fail",
) -> tuple[list[dict], list[Checked]]:
    """Scan `root` and return (manifest rows, bad files). Raises CvpipeError on unusable data."""
    root = Path(root)
    _check_ratios(ratios)
    if on_bad_image not in typing.get_args(OnBadImage):
        raise CvpipeError(
            f"data.on_bad_image must be one of {typing.get_args(OnBadImage)}, not {on_bad_image!r}"
        )
    classes = _class_names(root)
    samples = list(datatree.iter_samples(root))
    checked: list[Checked] = []
    threads = max(1, threads)
    with ThreadPoolExecutor(threads) as pool, Progress("index", len(samples), log) as bar:
        for one in in_order(pool, lambda s: check_file(root, *s), samples, 4 * threads):
            checked.append(one)
            bar.update()
    bad = [c for c in checked if c.problem]
    if bad and on_bad_image == "fail":
        raise CvpipeError(
            f"{len(bad)} of {len(checked)} files in {root} are not usable images:\n"
            f"{_format_bad(bad, root)}\n"
            "Fix or remove them, or set data.on_bad_image: skip to leave them out "
            "(they are then listed in bad_images.csv)."
        )
    good, dropped = _conflicting_labels(
        root, [c for c in checked if not c.problem], on_conflicting_labels
    )
    bad += dropped
    _check_class_sizes(root, classes, good, ratios)
    return _manifest_rows(classes, good, ratios, seed), bad


def _conflicting_labels(
    root: Path, good: list[Checked], mode: OnConflictingLabels
) -> tuple[list[Checked], list[Checked]]:
    """(kept, dropped): files whose bytes occur in two classes fail the run, or are dropped."""
    by_content: dict[str, list[Checked]] = {}
    for c in good:
        by_content.setdefault(c.sha256, []).append(c)
    clashes = [g for g in by_content.values() if len({c.class_name for c in g}) > 1]
    if not clashes:
        return good, []
    if mode not in typing.get_args(OnConflictingLabels):
        raise CvpipeError(f"data.on_conflicting_labels must be fail or drop, not {mode!r}")
    pairs = [
        f"  {root / a.rel} ({a.class_name}) = {root / b.rel} ({b.class_name})"
        for g in clashes
        for i, a in enumerate(g)
        for b in g[i + 1 :]
        if a.class_name != b.class_name
    ]
    if mode == "fail":
        raise CvpipeError(
            f"{len(pairs)} pair(s) of files in {root} have the same bytes in different classes "
            f"(contradictory labels):\n" + "\n".join(pairs) + "\nRemove the copies with the "
            "wrong label, or set data.on_conflicting_labels: drop to leave out every such file "
            "(they are then listed in bad_images.csv)."
        )
    clash = {c.sha256: sorted({c.class_name for c in g}) for g in clashes for c in g}
    dropped = [
        replace(c, problem=f"same bytes in classes {', '.join(clash[c.sha256])} "
                f"(contradictory labels; dropped by data.on_conflicting_labels: drop)")
        for c in good if c.sha256 in clash
    ]  # fmt: skip
    return [c for c in good if c.sha256 not in clash], dropped


def _class_names(root: Path) -> list[str]:
    """The class folders of `root`, sorted; at least two, else a CvpipeError saying so."""
    if not root.is_dir():
        raise CvpipeError(
            f"data.root {str(root)!r} is not a folder. Point data.root in the config at a folder "
            "with one subfolder of images per class."
        )
    classes = [d.name for d in datatree.class_dirs(root)]
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise CvpipeError(
            f"data.root {str(root)!r} has {found}; a classifier needs at least two classes, "
            "one subfolder each."
        )
    return classes


def _check_class_sizes(
    root: Path, classes: list[str], good: list[Checked], ratios: dict[str, float]
) -> None:
    """Every class needs enough usable images for one in each split."""
    # Identical copies count once: they share a split (see the module docstring).
    per_class = Counter(c.class_name for c in {(c.class_name, c.sha256): c for c in good}.values())
    empty = [name for name in classes if per_class[name] == 0]
    if empty:
        raise CvpipeError(
            f"class folder(s) with no usable images: {', '.join(str(root / e) for e in empty)}. "
            "Add images or remove the folder."
        )
    need = min_class_size(ratios)
    small = [f"{name!r} ({per_class[name]})" for name in classes if per_class[name] < need]
    if small:
        raise CvpipeError(
            f"class(es) too small for the split {ratios}: {', '.join(small)}. Each class needs "
            f"at least {need} images (identical copies count once) so that train, val and test "
            "each get one; add images or change data.split."
        )


def _manifest_rows(
    classes: list[str], good: list[Checked], ratios: dict[str, float], seed: int
) -> list[dict]:
    """One manifest row per usable image, classes labelled 0..N-1 in folder order."""
    rows: list[dict] = []
    for label, name in enumerate(classes):
        members = [c for c in good if c.class_name == name]
        splits = assign_splits(
            [c.rel for c in members], ratios, seed, {c.rel: c.sha256 for c in members}
        )
        rows.extend(
            {
                "path": c.rel,
                "class": name,
                "label": label,
                "split": splits[c.rel],
                "sha256": c.sha256,
                "width": c.width,
                "height": c.height,
                "channels": c.channels,
                "bit_depth": c.bit_depth,
            }
            for c in members
        )
    return rows


def duplicate_rows(rows: list[dict]) -> list[dict]:
    """Manifest rows whose content (sha256) occurs more than once in their class, grouped."""
    copies = Counter((r["class"], r["sha256"]) for r in rows)
    dups = [r for r in rows if copies[r["class"], r["sha256"]] > 1]
    dups.sort(key=lambda r: (r["class"], r["sha256"], r["path"]))
    return [{k: r[k] for k in DUPLICATE_FIELDS} for r in dups]


def write_index(
    root: str | Path,
    manifest_path: str | Path,
    bad_path: str | Path,
    ratios: dict[str, float],
    seed: int,
    on_bad_image: OnBadImage = "fail",
    threads: int = 1,
    duplicates_path: str | Path | None = None,
    on_conflicting_labels: OnConflictingLabels = "fail",
) -> list[dict]:
    """Run `build_index`; write the manifest, the bad-file and the duplicate reports."""
    rows, bad = build_index(root, ratios, seed, on_bad_image, threads, on_conflicting_labels)
    if bad:
        log.warning(
            "skipped %d bad files (listed in %s):\n%s",
            len(bad),
            bad_path,
            _format_bad(bad, Path(root)),
        )
    dups = duplicate_rows(rows)
    if dups:
        log.warning(
            "%d files are copies of another file in their class; each group of copies shares "
            "one split (listed in %s):\n%s",
            len(dups),
            duplicates_path,
            "\n".join(f"  {d['sha256'][:12]} {d['split']:<5} {d['path']}" for d in dups),
        )
    if duplicates_path is not None:
        atomic.write_csv(duplicates_path, DUPLICATE_FIELDS, dups)
    atomic.write_csv(bad_path, BAD_FIELDS, [{"path": b.rel, "reason": b.problem} for b in bad])
    atomic.write_csv(manifest_path, MANIFEST_FIELDS, rows)
    counts = Counter((r["class"], r["split"]) for r in rows)
    for name in sorted({r["class"] for r in rows}):
        log.info("%-12s %s", name, "  ".join(f"{s}={counts[name, s]}" for s in SPLITS))
    return rows


def read_manifest(path: str | Path) -> list[dict]:
    """Manifest rows with `label`, `width`, `height`, `channels`, `bit_depth` as ints."""
    return list(iter_manifest(path))


def iter_manifest(path: str | Path) -> Iterator[dict]:
    """`read_manifest`'s rows one at a time, for a pass over a manifest too long to hold."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key in ("label", "width", "height", "channels", "bit_depth"):
                row[key] = int(row[key])
            yield row


def class_names(rows: list[dict]) -> list[str]:
    """Class names in label order."""
    names = {r["label"]: r["class"] for r in rows}
    return [names[i] for i in range(len(names))]


def split_rows(rows: list[dict], split: str) -> list[dict]:
    """Rows of one split, in manifest order: the order of that split's preprocessed cache."""
    return [r for r in rows if r["split"] == split]


def manifest_sha256(path: str | Path) -> str:
    """The manifest file's sha256: the identity of the data a model was trained on."""
    return datatree.sha256_file(path)
