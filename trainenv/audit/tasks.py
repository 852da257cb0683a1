"""Running a list of tasks through a backend into a results store, showing progress.

Audits (:func:`~trainenv.audit.runner.run_audit`), early-warning simulations
(:func:`~trainenv.warning.simulation.simulate_runs`) and the findings all run their work
through :func:`run_tasks`: each task's result becomes one or more
:class:`~trainenv.audit.store.RunRecord` s, written as soon as it arrives, so an interrupted
job resumes with the runs the store already holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from trainenv.audit.backends import Backend
from trainenv.audit.progress import progress as show_progress
from trainenv.audit.store import ResultStore, RunRecord

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["backend_for", "run_tasks"]


def backend_for(workers: int) -> str:
    """The backend for ``workers`` local workers: ``"process"`` if more than one, else
    ``"serial"`` (a process pool of one only adds start-up time)."""
    return "process" if workers > 1 else "serial"


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    store: ResultStore,
    records: Callable[[R], list[RunRecord]],
    *,
    backend: Backend,
    total: int,
    done: int = 0,
    desc: str = "runs",
    progress: bool | None = None,
    on_record: Callable[[RunRecord], None] | None = None,
) -> None:
    """Run ``fn`` over ``tasks`` on ``backend`` (entered and left here) and write each
    result's ``records(result)`` to ``store`` as it arrives (in completion order).

    Args:
        fn: A picklable function of one task (it runs in worker processes).
        tasks: The tasks with work left.
        store: Where the records go (prepared by the caller, who read what it holds).
        records: A result's runs to store.
        backend: From :func:`~trainenv.audit.backends.make_backend`, made (and so checked)
            before any work.
        total: Runs in the whole job, for the progress display; ``done`` of them already
            stored.
        desc: The progress display's label.
        progress: Show progress on stderr (``None``, the default, or True): a bar on a
            terminal, else a line every :data:`~trainenv.audit.progress.PROGRESS_SECONDS`
            with the time elapsed and an estimate of the rest; False: nothing.
        on_record: Called with each record once it is stored.
    """
    with show_progress(total, done, desc, progress) as bar, backend:
        for result in backend.map_unordered(fn, tasks):
            written = records(result)
            for record in written:
                store.write(record)
                if on_record is not None:
                    on_record(record)
            bar.update(len(written))
