"""Which files make up an ImageFolder-style data set, and the data set's content fingerprint.

A data set is a folder with one subfolder per class; every non-hidden file below a class folder
(at any depth, as in torchvision's `ImageFolder`) is a sample of that class. Hidden files and
folders (`.DS_Store`, `.ipynb_checkpoints`) and files directly in the root are not samples.

The fingerprint is a sha256 over every sample's relative path and content. The workflow passes it
to the index rule as a param, so indexing (and everything after it) reruns when the data's content
changes, and not when files are merely touched or restored with new timestamps (`dvc pull`).
Hashing is cached per file, keyed by size, mtime and inode as DVC does, so an unchanged tree
costs one `stat` per file.

This module is imported by the Snakefile at parse time: standard library (and `atomic`) only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from cvpipe import atomic

_CHUNK = 1 << 20


def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Class folders of `root`, sorted by name (the name is the class)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and _visible(p.name))


def iter_samples(root: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """Yield `(class_name, path)` for every sample file, in a stable (sorted) order."""
    for class_dir in class_dirs(root):
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for name in sorted(filenames):
                if _visible(name):
                    yield class_dir.name, Path(dirpath) / name


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
    root = Path(root)
    cache_path = Path(cache_file)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    new_cache: dict[str, list] = {}
    digest = hashlib.sha256()
    for _, path in iter_samples(root):
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = cache.get(rel)
        sha = entry[3] if entry and entry[:3] == key else sha256_file(path)
        new_cache[rel] = [*key, sha]
        digest.update(f"{rel}\0{sha}\n".encode())
    if new_cache != cache:
        atomic.write_text(cache_path, json.dumps(new_cache))
    return digest.hexdigest()
