"""Progress of a long loop over images, readable both on a terminal and in a job's log file.

On a terminal (stderr is a tty) it is a tqdm bar. In a log file, where a bar's carriage returns
turn into one unreadable line, it is a log line every `interval` seconds and one at the end:
`preprocess train: 1200/2000 images (60%), 540 img/s, 2 s left`.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm


class Progress:
    """Count finished items (`update`) and report them; use as a context manager."""

    def __init__(self, label: str, total: int, log: logging.Logger, interval: float = 10.0) -> None:
        self.label, self.total, self.log, self.interval = label, total, log, interval
        self.done = 0
        self.started = self.last = time.perf_counter()
        interactive = sys.stderr.isatty()
        self.bar = (
            tqdm(total=total, desc=label, unit="img", file=sys.stderr, mininterval=0.5)
            if interactive
            else None
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float, final: bool = False) -> str:
        """`label: done/total images (pct%), rate img/s, N s left` (or `done in N s`)."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / self.total if self.total else 100.0
        end = f"done in {elapsed:.1f} s" if final else f"{left:.0f} s left"
        return (
            f"{self.label}: {self.done}/{self.total} images ({pct:.0f}%), {rate:.0f} img/s, {end}"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()
        elif kind is None:  # the last line: how long the whole loop took
            self.log.info("%s", self.line(time.perf_counter(), final=True))
