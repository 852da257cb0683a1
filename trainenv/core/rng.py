"""A run's own random state.

Libraries such as stable-baselines3 and torch's dropout draw from the process-global torch,
numpy and Python generators. To keep each run's randomness its own (two runs stepped
alternately in one process must behave as if each ran alone, and a fork must reproduce the
original), a trainer keeps the three global states of its run in a :class:`RunRng` and swaps
them in around every piece of its work.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


class RunRng:
    """The torch, numpy and Python global generator states of one run."""

    def __init__(self, seed: int) -> None:
        with _saved_global_state():
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            self._state = _capture()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this run's states the global ones for the duration of the block."""
        outer = _capture()
        _install(self._state)
        try:
            yield
        finally:
            self._state = _capture()
            _install(outer)


def perturbation_generator(seed: int, name: str) -> np.random.Generator:
    """A generator for one intervention's noise, independent of the run's training randomness.

    Seeded from the run's seed and the intervention's name (with a stable hash, not Python's
    salted ``hash``), so a perturbed branch and its unperturbed fork share every training draw:
    the difference between them is the perturbation alone (common random numbers).
    """
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from a numpy generator (advances the numpy generator once)."""
    return torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))


@contextmanager
def _saved_global_state() -> Iterator[None]:
    outer = _capture()
    try:
        yield
    finally:
        _install(outer)


def _capture() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _install(state: tuple[Any, Any, Any]) -> None:
    torch_state, np_state, py_state = state
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)
