"""Execution backends: where an audit's groups run.

- ``serial``: in this process, one group after another.
- ``process`` (default): a pool of local worker processes (``forkserver``, or ``spawn`` where
  that is missing; never ``fork``, which would copy this process's torch thread pools and
  RNG state into the workers).
- ``ray``: Ray tasks, on a local Ray instance or a cluster (``address``); needs the optional
  extra ``trainenv[ray]``, and ``trainenv`` installed on every node.

Every worker runs torch with one thread: the runs are small, threads would only fight over
the cores, and one thread keeps results identical across backends. Results come back in
completion order; the caller writes them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

BACKENDS = ("serial", "process", "ray")


def init_worker() -> None:
    """Worker set-up: one torch thread."""
    import torch

    torch.set_num_threads(1)


@contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Backend(AbstractContextManager["Backend"]):
    """Runs a function over tasks; use as a context manager around :meth:`map_unordered`."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        return None


class SerialBackend(Backend):
    """In this process (one torch thread for the audit's duration)."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        with _one_thread():
            for task in tasks:
                yield fn(task)


class ProcessBackend(Backend):
    """A pool of ``workers`` local processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        tasks = list(tasks)
        if not tasks:
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._pool = ProcessPoolExecutor(
            min(self.workers, len(tasks)), mp_context=context, initializer=init_worker
        )
        pending: set[Future[R]] = {self._pool.submit(fn, task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayBackend(Backend):
    """Ray tasks of one CPU each; starts a local Ray (``workers`` CPUs) if none is running
    and no ``address`` is given, and shuts down only a Ray it started."""

    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("backend 'ray' needs Ray: pip install 'trainenv[ray]'") from None
        self._ray, self.workers, self.address = ray, workers, address
        self._started = False

    def __enter__(self) -> RayBackend:
        if not self._ray.is_initialized():
            options: dict[str, Any] = {
                "address": self.address,
                "include_dashboard": False,
                "log_to_driver": False,
            }
            if self.address is None:
                options["num_cpus"] = self.workers
            self._ray.init(**options)
            self._started = True
        return self

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        remote: Any = self._ray.remote(num_cpus=1)(_in_one_thread)
        pending = [remote.remote(fn, task) for task in tasks]
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            yield self._ray.get(done[0])

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _in_one_thread(fn: Callable[[T], R], task: T) -> R:
    init_worker()
    return fn(task)


def make_backend(name: str, workers: int, address: str | None = None) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`) with ``workers`` workers."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if name == "serial":
        return SerialBackend()
    if name == "process":
        return ProcessBackend(workers)
    if name == "ray":
        return RayBackend(workers, address)
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
