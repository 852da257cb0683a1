"""Progress of a long job on stderr: a bar on a terminal, plain lines everywhere else.

A bar redrawn with carriage returns is unreadable in a log file, a CI job or ``nohup``
output, and tqdm draws nothing at all when stderr is not a terminal; there the job prints
one line every :data:`PROGRESS_SECONDS` (and one when it ends) with the runs done, the time
elapsed and an estimate of the time left.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

__all__ = ["PROGRESS_SECONDS", "Progress", "ProgressLines", "progress"]

PROGRESS_SECONDS = 20.0
"""Seconds between two progress lines when stderr is not a terminal."""


class Progress(Protocol):
    """What a job needs of its progress display."""

    def update(self, n: int = 1) -> object: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> object: ...


class ProgressLines:
    """Plain progress lines: ``audit: 40/65 runs (62%), 1:20 elapsed, about 0:50 left``,
    after one saying how many runs the job has (and how many were done before it started).

    The estimate extrapolates this session's rate (runs stored before a resume do not count).

    Args:
        total: Runs in the whole job.
        done: Runs already done when it starts.
        desc: The job's label.
        every: Seconds between lines (default :data:`PROGRESS_SECONDS`); a line also
            marks the last run.
        file: Where lines go (default: ``sys.stderr`` at the time of writing).
    """

    def __init__(
        self,
        total: int,
        done: int = 0,
        desc: str = "runs",
        every: float | None = None,
        file: TextIO | None = None,
    ) -> None:
        self.total, self.done, self.desc, self.file = total, done, desc, file
        self.every = PROGRESS_SECONDS if every is None else every
        self._new = 0
        self._start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished runs; print a line if one is due."""
        self.done += n
        self._new += n
        now = time.monotonic()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            print(self.line(now), file=self.file or sys.stderr, flush=True)

    def line(self, now: float) -> str:
        """The progress line at time ``now`` (``time.monotonic()`` seconds)."""
        elapsed = now - self._start
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total} runs{share}, {_clock(elapsed)} elapsed"
        left = self.total - self.done
        if self._new and left > 0:
            text += f", about {_clock(elapsed / self._new * left)} left"
        return text

    def __enter__(self) -> ProgressLines:
        # A first line at once: a job's first result can take minutes (an audit's runs of one
        # seed come back together).
        before = f", {self.done} done before" if self.done else ""
        print(f"{self.desc}: {self.total} runs{before}", file=self.file or sys.stderr, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress(total: int, done: int, desc: str, show: bool | None = None) -> Progress:
    """The progress display of a job of ``total`` runs, ``done`` of them already finished:
    a tqdm bar if stderr is a terminal, else :class:`ProgressLines`; nothing if ``show`` is
    False (``None`` or True: show it)."""
    from tqdm import tqdm

    if show is False:
        return tqdm(total=total, initial=done, disable=True)
    if not sys.stderr.isatty():
        return ProgressLines(total, done, desc)
    return tqdm(total=total, initial=done, unit="run", file=sys.stderr, desc=desc)


def _clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
