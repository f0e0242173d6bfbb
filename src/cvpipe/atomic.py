"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader (or a rerun after a crash) sees either the old file or the complete new one, never a
half-written file. `os.replace` is atomic on POSIX when both paths are on the same filesystem,
which holds because the temporary file lives in the target's directory.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it.

    `suffix` keeps an extension on the temporary name for writers that infer the format from it
    (matplotlib, numpy's `.npy`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600; give what a plain open() would
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes free on the filesystem that holds (or will hold) `path`: its nearest existing
    folder is asked. Tests replace this function to simulate a full disk."""
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB ({n:,} bytes)"


def no_space(path: str | os.PathLike[str], needed: int) -> str | None:
    """The sentence saying that `path` (a file, or a folder of files) does not fit in the free
    space, or None when it fits. Writers ask before writing a large file: a full disk found
    mid-write surfaces as torch's "unexpected pos" or a memory map's SIGBUS, never as ENOSPC."""
    free = free_bytes(path)
    if needed <= free:
        return None
    return space_message(path, needed, free)


def space_message(path: str | os.PathLike[str], needed: int, free: int | None = None) -> str:
    """One sentence: `path`, the bytes it needs, the bytes free beside it and what to do."""
    free = free_bytes(path) if free is None else free
    return (
        f"not enough disk space for {path}: it needs about {_size(needed)} and "
        f"{_size(free)} are free there; free some space (or move results/ to a larger disk) "
        "and rerun."
    )


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space: ENOSPC or a quota, a file-size limit, or
    torch.save's "unexpected pos" (its zip writer reports any short write so, errno lost)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(exc, RuntimeError) and "unexpected pos" in str(exc)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write `data` to `path`, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 `text` to `path`."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write `obj` as indented JSON (keys in insertion order, trailing newline)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(
    path: str | os.PathLike[str],
    fieldnames: Sequence[str],
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
) -> None:
    """Atomically write a CSV with a header line; a row is a mapping by column or a sequence.

    A mapping with a key outside `fieldnames`, or a sequence of another length, is an error.
    Lines end in a bare newline whatever the platform, so the files hash the same everywhere.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            row if isinstance(row, Mapping) else dict(zip(fieldnames, row, strict=True))
        )
    write_text(path, buf.getvalue())
