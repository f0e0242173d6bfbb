"""GPU ids for concurrent jobs: distinct devices per job, with file locks that die with the job.

Snakemake's `--resources gpu=N` only counts GPUs: every job still sees all of them and starts
on `cuda:0` (snakemake issue #281). `cvpipe gpus --count K -- CMD` fixes that for cvpipe's rules:

1. it picks K free ids among the candidates (the ids in `CUDA_VISIBLE_DEVICES` when that is
   already set, by SLURM or a user; else 0..N-1, N from `nvidia-smi`, torch, or `--total`);
2. it holds an exclusive `fcntl.flock` on `<lock dir>/gpu-<id>.lock` for each, taken under a short
   allocation lock so that two jobs never grab half each;
3. it sets `CUDA_VISIBLE_DEVICES` to exactly those ids and *execs* CMD, which inherits the locked
   file descriptors. The kernel drops the locks when the job's last process exits, whatever
   the cause (normal exit, crash, SIGKILL), so no id is ever leaked and nothing needs cleanup.

A job that finds too few free ids waits and retries. The lock folder must be local to the
machine (the default is under /tmp): GPUs belong to one machine, and flock is unreliable on
some network filesystems. Two environment variables configure it per machine:
CVPIPE_GPU_COUNT (how many GPUs, for machines whose driver cannot be asked, and tests) and
CVPIPE_GPU_LOCK_DIR (the lock folder).

Standard library only: it runs before the job imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cvpipe.errors import CvpipeError

log = logging.getLogger(__name__)

# Machine settings, not experiment settings: changing them must not retrain anything, so they
# come from the environment rather than from the workflow config.
DEFAULT_LOCK_DIR = "/tmp/cvpipe-gpu-locks"


def lock_dir_setting() -> str:
    return os.environ.get("CVPIPE_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR


def total_setting() -> int | None:
    value = os.environ.get("CVPIPE_GPU_COUNT")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise CvpipeError(f"CVPIPE_GPU_COUNT must be a whole number, not {value!r}") from None


def count_gpus() -> int:
    """Number of GPUs the driver reports (0 without one): nvidia-smi, else torch."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def candidate_ids(total: int | None = None) -> list[str]:
    """The ids a job may take: `CUDA_VISIBLE_DEVICES` if set, else 0..total-1.

    `total` defaults to CVPIPE_GPU_COUNT, else the driver's count.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [v.strip() for v in visible.split(",") if v.strip()]
    if total is None:
        total = total_setting()
    n = count_gpus() if total is None else total
    return [str(i) for i in range(n)]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_name(gpu_id: str) -> str:
    return "gpu-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu_id) + ".lock"


def acquire(
    count: int,
    lock_dir: str | os.PathLike[str] | None = None,
    total: int | None = None,
    timeout: float | None = None,
) -> tuple[list[str], list[int]]:
    """Lock `count` free GPU ids; returns (ids, lock fds). Waits while too few are free.

    `lock_dir` defaults to CVPIPE_GPU_LOCK_DIR, else /tmp/cvpipe-gpu-locks.
    """
    ids = candidate_ids(total)
    if count > len(ids):
        raise CvpipeError(
            f"this job needs {count} GPU(s) but only {len(ids)} exist here "
            f"({', '.join(ids) or 'none'});"
            " lower the experiment's `gpus` (or set CVPIPE_GPU_COUNT where the driver cannot see "
            "the GPUs)."
        )
    folder = Path(lock_dir or lock_dir_setting())
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        folder.chmod(0o1777)  # shared by every user's jobs on this machine
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while True:
        with _locked(folder / "allocate.lock"):
            held: list[tuple[str, int]] = []
            for gpu_id in ids:
                fd = _try_lock(folder / _lock_name(gpu_id))
                if fd is not None:
                    held.append((gpu_id, fd))
                    if len(held) == count:
                        return [g for g, _ in held], [fd for _, fd in held]
            for _, fd in held:
                os.close(fd)
        if deadline is not None and time.monotonic() > deadline:
            raise CvpipeError(f"no {count} free GPU(s) among {ids} after {timeout:.0f} s")
        if not waited:
            log.info("waiting for %d free GPU(s) among %s", count, ", ".join(ids))
            waited = True
        time.sleep(random.uniform(0.1, 0.5))


def run_with_gpus(
    count: int,
    command: Sequence[str],
    lock_dir: str | os.PathLike[str] | None = None,
    total: int | None = None,
    timeout: float | None = None,
) -> None:
    """Acquire `count` ids, export CUDA_VISIBLE_DEVICES and exec `command` (never returns)."""
    if not command:
        raise CvpipeError("cvpipe gpus: give the command to run after `--`")
    env = dict(os.environ)
    if count > 0:
        ids, fds = acquire(count, lock_dir, total, timeout)
        for fd in fds:
            os.set_inheritable(fd, True)  # the command holds the locks for as long as it runs
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        log.info("GPU ids %s for: %s", env["CUDA_VISIBLE_DEVICES"], " ".join(command))
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as exc:
        raise CvpipeError(f"cannot run {command[0]!r}: {exc.strerror}") from None
