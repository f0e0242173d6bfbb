"""Run torchrun so that SLURM's SIGUSR1 stops the training cleanly instead of killing it.

    python -m cvpipe.relay -- torchrun ... -m cvpipe train ...

SLURM sends the time-limit warning (`--signal=USR1@120`, `scancel --signal=USR1`) to the
processes of a job step. torchrun has no handler for SIGUSR1, so its default action ends it, and
its workers die with it (`distributed._die_with_launcher`) before they can checkpoint; and
torchrun starts each worker in a session of its own, so a signal to the step's process group
never reaches them (torch.distributed.elastic's subprocess handler, `start_new_session`).

This relay starts the launcher with SIGUSR1 ignored (inherited through exec, so torchrun
survives the signal) and, when it gets SIGUSR1 itself, passes it on to the launcher's workers,
which checkpoint mid-epoch and exit 75 (`cvpipe.preemption`). SIGTERM goes to the launcher,
which forwards it to the workers itself, and the relay stays to report how the launcher ended.
The relay's exit status is the launcher's.

Standard library only: it runs before anything imports torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cvpipe.errors import CvpipeError


def _parent(pid: int) -> int | None:
    try:
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _is_worker(pid: int) -> bool:
    """torchrun's workers carry LOCAL_RANK in the environment they were started with."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(item.startswith(b"LOCAL_RANK=") for item in environ.split(b"\0"))


def workers(launcher: int) -> list[int]:
    """The launcher's worker processes: its children with LOCAL_RANK (not, say, a resource
    tracker, nor the workers' own DataLoader processes, whom SIGUSR1 would kill)."""
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in children if _parent(pid) == launcher and _is_worker(pid)]


def _ignore_usr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run(command: Sequence[str]) -> int:
    """Run `command` (a torchrun line) with SIGUSR1 relayed to its workers; its exit status."""
    if not command:
        raise CvpipeError("cvpipe.relay: give the command to run after `--`")
    try:
        launcher = subprocess.Popen(list(command), preexec_fn=_ignore_usr1)
    except OSError as exc:
        raise CvpipeError(f"cannot run {command[0]!r}: {exc.strerror}") from None

    def relay_usr1(signum: int, frame) -> None:
        for pid in workers(launcher.pid):
            with contextlib.suppress(ProcessLookupError):  # the worker ended meanwhile
                os.kill(pid, signal.SIGUSR1)

    def relay_term(signum: int, frame) -> None:
        launcher.send_signal(signum)

    signal.signal(signal.SIGUSR1, relay_usr1)
    signal.signal(signal.SIGTERM, relay_term)
    code = launcher.wait()  # retried after each handled signal (PEP 475)
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[1:] if args[:1] == ["--"] else args
    try:
        return run(command)
    except CvpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
