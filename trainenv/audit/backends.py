"""Execution backends: where an audit's groups run.

- ``serial``: in this process, one group after another.
- ``process`` (default): a pool of local worker processes, started with ``spawn`` (never
  ``fork``, which would copy this process's torch thread pools and RNG state into the
  workers; not ``forkserver`` either: its workers are the server's children, and they and the
  server keep each other alive when this process is killed). Workers die with this process
  however it ends: ``PR_SET_PDEATHSIG`` on Linux and a watchdog thread everywhere. They ignore
  SIGINT (Ctrl-C reaches the whole process group): this process stops them, at once, when it
  leaves the backend with an exception.
- ``population``: the audit packs its runs into populations (:mod:`trainenv.audit.population`)
  and runs each batch in this process (one worker) or in a ``process`` pool (several).
- ``ray``: Ray tasks, on a local Ray instance or a cluster (``address``); needs the optional
  extra ``trainenv[ray]``, and ``trainenv`` installed on every node. Where every recipe of
  the plan has a population form, each task is one population batch (the function the
  ``population`` backend runs), else one group.

Every worker runs torch with one thread: the runs are small, threads would only fight over
the cores, and one thread keeps results identical across backends. Results come back in
completion order; the caller writes them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

BACKENDS = ("auto", "population", "serial", "process", "ray")
"""Backend names; ``auto`` is resolved by the plan (``AuditPlan.resolved_backend``)."""


WATCHDOG_SECONDS = 1.0  # how often a worker checks that its parent is alive
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def init_worker(parent_pid: int | None = None) -> None:
    """Worker set-up: one torch thread; with ``parent_pid`` (the pool's owner, this worker's
    parent), SIGINT ignored and death with the parent."""
    if parent_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(1)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (raised again on leaving) while the caller handles a
    result: a stop lands while work runs or is awaited, never halfway through storing one.
    (Handlers, not a signal mask: any thread may receive a signal, the main one handles it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def remember(signum: int, frame: object) -> None:
        arrived.append(signum)

    before = {s: signal.signal(s, remember) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if arrived:  # now handled as it would have been
            signal.raise_signal(arrived[0])


def _die_with_parent(parent_pid: int) -> None:
    """Exit when process ``parent_pid`` (our parent) ends, even by ``kill -9``."""
    if sys.platform.startswith("linux"):  # the kernel sends SIGKILL when the parent exits
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)
    # Elsewhere (and as a fallback): once the parent is gone we are re-parented.
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)


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
                result = fn(task)
                with _signals_held():
                    yield result


class ProcessBackend(Backend):
    """A pool of ``workers`` local processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        tasks = list(tasks)
        if not tasks:
            return
        self._pool = ProcessPoolExecutor(
            min(self.workers, len(tasks)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(os.getpid(),),
        )
        pending: set[Future[R]] = {self._pool.submit(fn, task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                with _signals_held():
                    yield result

    def __exit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if exc[0] is not None:  # interrupted or failed: stop the runs in flight now
            # ``_processes`` is private, but the executor offers no other way before 3.14.
            for process in list((pool._processes or {}).values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


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
            result = self._ray.get(done[0])
            with _signals_held():
                yield result

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
    if name == "serial" or (name == "population" and workers == 1):
        return SerialBackend()
    if name == "population":
        return ProcessBackend(workers)
    if name == "process":
        return ProcessBackend(workers)
    if name == "ray":
        return RayBackend(workers, address)
    raise ValueError(f"backend must be one of {list(BACKENDS[1:])}, got {name!r}")
