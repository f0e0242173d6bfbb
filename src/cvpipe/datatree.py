"""Which files make up an ImageFolder-style data set, and the data set's content fingerprint.

A data set is a folder with one subfolder per class; every non-hidden file below a class folder
(at any depth, as in torchvision's `ImageFolder`) is a sample of that class. Hidden files and
folders (`.DS_Store`, `.ipynb_checkpoints`) and files directly in the root are not samples.
Symlinks are followed. A dangling symlink, a symlink loop, or a folder link back to a folder above
it is still a sample, a bad one (`unreadable` says why): the index reports it like any bad image,
and the fingerprint hashes the reason instead of failing while Snakemake builds the job graph.

The fingerprint is a sha256 over every sample's relative path and content. The workflow passes it
to the index rule as a param, so indexing (and everything after it) reruns when the data's content
changes, and not when files are merely touched or restored with new timestamps (`dvc pull`).
Hashing is cached per file, keyed by size, mtime and inode as DVC does, so an unchanged tree
costs one `stat` per file.

This module is imported by the Snakefile at parse time: standard library (and `atomic`) only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from cvpipe import atomic

_CHUNK = 1 << 20


def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Class folders of `root`, sorted by name (the name is the class)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and _visible(p.name))


def _folder_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def iter_samples(root: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """Yield `(class_name, path)` for every sample file, in a stable (sorted) order."""
    for class_name, path, _ in _samples(root):
        yield class_name, Path(path)


def _samples(root: str | os.PathLike[str]) -> Iterator[tuple[str, str, str]]:
    """`(class_name, path, path relative to root with "/")` of every sample, in sorted order:
    strings, not Paths, because the fingerprint walks 70,000 files on every `snakemake` call."""
    for class_dir in class_dirs(root):
        # Folders above (and on the way down from) the class folder: a link to one is a loop.
        up = [class_dir, *class_dir.absolute().parents, *class_dir.resolve().parents]
        top = str(class_dir)
        above = {top: {_folder_id(str(p)) for p in up}}
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            seen = above.pop(dirpath, set())
            loops: list[str] = []
            keep: list[str] = []
            for d in sorted(d for d in dirnames if _visible(d)):
                folder = _folder_id(os.path.join(dirpath, d))
                (loops if folder is None or folder in seen else keep).append(d)
                above[os.path.join(dirpath, d)] = seen | {folder}
            dirnames[:] = keep
            # os.walk's folders are `top` joined with the names below it
            rel_dir = (class_dir.name + dirpath[len(top) :]).replace(os.sep, "/")
            for name in sorted(filenames + loops):
                if _visible(name):
                    yield class_dir.name, f"{dirpath}{os.sep}{name}", f"{rel_dir}/{name}"


def folder_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every non-hidden file below `folder`, at any depth, sorted by path (the inputs of
    `cvpipe predict`). Folder links are followed, as the index does; a folder reached a second
    time (a link loop) is not read again."""
    found = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already read
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if _visible(d)]
        found += [Path(dirpath) / name for name in filenames if _visible(name)]
    return sorted(found)


def unreadable(path: Path) -> str | None:
    """Why a sample cannot be read as a file (a symlink loop, a dangling symlink), or None."""
    try:
        st = path.stat()
    except OSError as exc:
        target = os.readlink(path) if path.is_symlink() else ""
        if exc.errno == errno.ELOOP:
            return f"symlink loop ({path.name} -> {target})"
        if exc.errno == errno.ENOENT and target:
            return f"dangling symlink (its target {target} does not exist)"
        return f"unreadable: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        link = f" ({path.name} -> {os.readlink(path)})" if path.is_symlink() else ""
        return f"symlink loop: a link back to a folder above it{link}"
    return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_fingerprint(root: str | os.PathLike[str], cache_file: str | os.PathLike[str]) -> str:
    """sha256 over `(relative path, content sha256)` of every sample below `root`.

    `cache_file` (JSON) remembers each file's hash with the stat fields it was computed from; a
    file whose size, mtime or inode changed is hashed again. The cache is rewritten atomically.
    """
    return _fingerprint(((rel, path) for _, path, rel in _samples(root)), Path(cache_file))


def files_fingerprint(root: str | os.PathLike[str], cache_file: str | os.PathLike[str]) -> str:
    """As `tree_fingerprint`, over every file of `folder_files(root)` (any depth, no classes)."""
    files = ((p.relative_to(root).as_posix(), str(p)) for p in folder_files(root))
    return _fingerprint(files, Path(cache_file))


def _fingerprint(files: Iterable[tuple[str, str]], cache_path: Path) -> str:
    """The fingerprint of `(relative path, path)` pairs, in their order."""
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    new_cache: dict[str, list] = {}
    digest = hashlib.sha256()
    for rel, path in files:
        try:  # one stat per file: this runs on every `snakemake` call (70,000 files: ~0.4 s)
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or stat.S_ISDIR(st.st_mode):
            # a bad file counts by its reason; the stage that reads it reports it
            digest.update(f"{rel}\0{unreadable(Path(path))}\n".encode())
            continue
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = cache.get(rel)
        sha = entry[3] if entry and entry[:3] == key else sha256_file(path)
        new_cache[rel] = [*key, sha]
        digest.update(f"{rel}\0{sha}\n".encode())
    if new_cache != cache:
        atomic.write_text(cache_path, json.dumps(new_cache))
    return digest.hexdigest()
