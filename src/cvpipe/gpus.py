"""GPU ids for concurrent jobs: distinct devices per job, with file locks that die with the job.

Snakemake's `--resources gpu=N` only counts GPUs: every job still sees all of them and starts
on `cuda:0` (snakemake issue #281). `cvpipe gpus --count K -- CMD` fixes that for cvpipe's rules:

1. it picks K free ids among the candidates (the ids in `CUDA_VISIBLE_DEVICES` when that is
   already set, by SLURM or a user; else 0..N-1, N from `nvidia-smi`, torch, or `--total`);
2. it holds an exclusive `fcntl.flock` on `<lock dir>/gpu-<key>.lock` for each, taken under a
   short allocation lock so that two jobs never grab half each. The key names the physical GPU
   (its UUID from `nvidia-smi --query-gpu=index,uuid`), not the id: under SLURM, ids are
   relative to the job (two jobs on one node both see GPU 0, on different GPUs), so index-named
   locks would make one wait for the other's GPU. Without nvidia-smi the key is the id;
3. it sets `CUDA_VISIBLE_DEVICES` to exactly those ids and *execs* CMD, which inherits the locked
   file descriptors. The kernel drops the locks when the job's last process exits, whatever
   the cause (normal exit, crash, SIGKILL), so no id is ever leaked and nothing needs cleanup.

A job that finds too few free ids waits and retries. The lock folder must be local to the
machine (the default is under /tmp): GPUs belong to one machine, and flock is unreliable on
some network filesystems. It is shared by every user's jobs: the folder is world-writable and
sticky (like /tmp), lock files are made 0666 whatever the umask, and are opened read-only, as
flock needs no write access (so a file made by an older cvpipe with 0644 still works for all).
Two environment variables configure it per machine:
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
import sys
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
    """Number of GPUs the driver reports (0 without one): nvidia-smi, else torch (in a child)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    # No nvidia-smi (some containers): ask torch in a child process, so this module and the
    # launcher that execs the job never import torch or initialise CUDA themselves.
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"]
    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip()) if out.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def gpu_uuids() -> dict[str, str]:
    """nvidia-smi's index -> UUID of the GPUs this process can see ({} without nvidia-smi).

    Inside a SLURM job whose devices are constrained, nvidia-smi numbers the job's GPUs from 0
    as CUDA_VISIBLE_DEVICES does, and the UUIDs say which physical GPUs they are.
    """
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    pairs = (line.split(",", 1) for line in out.stdout.splitlines() if "," in line)
    return {index.strip(): uuid.strip() for index, uuid in pairs}


def lock_keys(ids: Sequence[str]) -> list[str]:
    """The physical GPU behind each id: a UUID as is, an index through nvidia-smi, else the id.

    Indexes are taken in nvidia-smi's (PCI bus) order, which is CUDA's when CUDA_DEVICE_ORDER
    is PCI_BUS_ID, as schedulers set it; the key only has to be the same GPU for every job.
    """
    uuids = {} if all(i.startswith(("GPU-", "MIG-")) for i in ids) else gpu_uuids()
    return [uuids.get(i, i) for i in ids]


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


def _open_lock_file(path: Path) -> int:
    """A read-only fd on `path`, made 0666 first if it does not exist yet.

    Read-only because flock needs no write access, and another user's file (0644 from an
    older cvpipe) opens for reading. O_CREAT only when it is missing: with
    fs.protected_regular, O_CREAT on another user's file in a sticky folder fails even
    though it exists.
    """
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        except PermissionError:
            raise CvpipeError(
                f"cannot open the GPU lock file {path}: another user made it unreadable; ask its "
                "owner to `chmod 666` it (or to remove it while no job runs)"
            ) from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue  # another job made it meanwhile: open theirs
        os.fchmod(fd, 0o666)  # the umask took bits off os.open's mode; every user must open it
        return fd


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None if another process holds it."""
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_folder(folder: Path) -> None:
    """Make the machine's lock folder, shared by every user like /tmp (mode 1777)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder.stat()
    # mkdir's mode is cut by the umask, and an older cvpipe made it 0755: fix it if it is ours.
    if info.st_uid == os.geteuid() and info.st_mode & 0o7777 != 0o1777:
        os.chmod(folder, 0o1777)


def _lock_name(key: str) -> str:
    return "gpu-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in key) + ".lock"


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
    _lock_folder(folder)
    keys = dict(zip(ids, lock_keys(ids), strict=True))
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while True:
        with _locked(folder / "allocate.lock"):
            held: list[tuple[str, int]] = []
            for gpu_id in ids:
                fd = _try_lock(folder / _lock_name(keys[gpu_id]))
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
