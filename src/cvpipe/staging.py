"""A copy of the training cache on node-local scratch (config `cache_scratch`), trained from.

On a cluster `results/` usually sits on a network filesystem, and every epoch reads the whole
memory-mapped cache again; a copy on the node's local disk (SLURM's `$SLURM_TMPDIR`, `$TMPDIR`)
is read at local-disk speed and does not load the shared filesystem (docs/imagenet-scale.md has
the numbers). `stage_cache` copies the cache's split files and `stats.json` to
`<scratch>/cvpipe-cache/<cache folder>-<hash of stats.json>` and returns that folder.

- `$VARS` and `~` in the folder are expanded here, in the job, where SLURM has set them;
- a file already there with the same size is kept (the folder's name carries the hash of
  `stats.json`, which names the manifest, so another cache never matches);
- each file is copied under a temporary name and renamed, so a crash leaves no half file;
- the free space is checked first (`cvpipe.atomic.no_space`): a full disk is one clear error;
- under DDP the local rank 0 of each node copies while the other ranks wait; an error on any
  rank stops every rank with the same message.

It is a launch setting: where the cache is read from is not part of what a checkpoint resumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from cvpipe import atomic, distributed
from cvpipe.distributed import DistEnv
from cvpipe.errors import CvpipeError

log = logging.getLogger(__name__)


def cache_file_names(cache_dir: Path) -> list[str]:
    """The files training reads from a cache folder: every split's images and labels, and
    stats.json last (found by name: importing cvpipe.index for its split names would put the
    index's code into training's fingerprint, cvpipe.stagecode)."""
    splits = sorted(cache_dir.glob("*_images.npy")) + sorted(cache_dir.glob("*_labels.npy"))
    return [path.name for path in splits] + ["stats.json"]


def expand_folder(scratch: str) -> Path:
    """`scratch` with `$VARS` and `~` expanded; an unset variable is an error naming it."""
    expanded = os.path.expanduser(os.path.expandvars(scratch))
    if "$" in expanded:
        raise CvpipeError(
            f"cache_scratch {scratch!r}: a variable in it is not set in this job ({expanded!r}); "
            "set it, or set cache_scratch to a folder, or to null to train from results/."
        )
    return Path(expanded)


def staged_folder(cache_dir: str | Path, scratch: str) -> Path:
    """Where the copy of `cache_dir` goes: `<scratch>/cvpipe-cache/<name>-<stats hash>`."""
    stats = Path(cache_dir) / "stats.json"
    try:
        digest = hashlib.sha256(stats.read_bytes()).hexdigest()[:12]
    except FileNotFoundError:
        raise CvpipeError(f"{stats} is missing: run the preprocess stage first.") from None
    return expand_folder(scratch) / "cvpipe-cache" / f"{Path(cache_dir).name}-{digest}"


def _copy_missing(cache_dir: Path, target: Path) -> tuple[int, int]:
    """Copy the files of `cache_dir` that `target` lacks; returns (files copied, bytes copied)."""
    todo: list[tuple[Path, Path]] = []
    for name in cache_file_names(cache_dir):
        source, copy = cache_dir / name, target / name
        if not source.is_file():
            raise CvpipeError(f"{source} is missing: rerun the preprocess stage.")
        if not (copy.is_file() and copy.stat().st_size == source.stat().st_size):
            todo.append((source, copy))
    needed = sum(source.stat().st_size for source, _ in todo)
    problem = atomic.no_space(target, needed)
    if problem:
        raise CvpipeError(
            f"cache_scratch: {problem} Or set cache_scratch to another folder, or to null to "
            f"train from {cache_dir} directly."
        )
    for source, copy in todo:
        with atomic.atomic_path(copy) as tmp:
            shutil.copyfile(source, tmp)
    return len(todo), needed


def stage_cache(cache_dir: str | Path, scratch: str, env: DistEnv) -> Path:
    """Copy `cache_dir` to node-local `scratch` (local rank 0; the others wait) and return the
    copy's folder, which every rank then trains from. A collective call under DDP."""
    cache_dir = Path(cache_dir)
    error, target = None, None
    try:
        target = staged_folder(cache_dir, scratch)
        if env.local_rank == 0:
            started = time.perf_counter()
            files, size = _copy_missing(cache_dir, target)
            log.info(
                "cache_scratch: training from %s, a copy of %s (%d file(s), %.1f MiB copied "
                "in %.1f s; the rest was there already)",
                target, cache_dir, files, size / 2**20, time.perf_counter() - started,
            )  # fmt: skip
    except CvpipeError as exc:
        error = str(exc)
    # One collective as the barrier: no rank reads the copy before it is complete, and an
    # error on any rank (a full disk on local rank 0) stops them all instead of hanging.
    errors = [e for e in distributed.gather_objects(error, env) if e]
    if errors:
        raise CvpipeError(errors[0])
    assert target is not None
    return target
