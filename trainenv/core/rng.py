"""A run's own random state.

Libraries such as stable-baselines3 and torch's dropout draw from the process-global torch,
numpy and Python generators. To keep each run's randomness its own (two runs stepped
alternately in one process must behave as if each ran alone, and a fork must reproduce the
original), a trainer keeps the global states of its run in a :class:`RunRng` and swaps them in
around every piece of its work. Only the streams a trainer declares are swapped: numpy's legacy
state costs ~60 us to read or write, more than a small MLP update, so a trainer that never
draws from numpy's global generator should not pay for it. A run on a CUDA device also owns the
``"cuda"`` stream (the generators of every CUDA device: dropout and sampling on the device draw
from them); no other run declares it, since reading it initialises CUDA.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

# stream name -> (read the global state, write it, seed it from a 32-bit seed)
_STREAMS: dict[str, tuple[Callable[[], Any], Callable[[Any], None], Callable[[int], Any]]] = {
    "torch": (torch.get_rng_state, torch.set_rng_state, torch.manual_seed),
    "numpy": (np.random.get_state, np.random.set_state, np.random.seed),  # noqa: NPY002
    "python": (random.getstate, random.setstate, random.seed),
    "cuda": (
        torch.cuda.get_rng_state_all,
        torch.cuda.set_rng_state_all,
        torch.cuda.manual_seed_all,
    ),
}
STREAMS = tuple(_STREAMS)
"""Every stream a run may own."""
ALL_STREAMS = ("torch", "numpy", "python")
"""The host streams: what a trainer owns unless it declares fewer (plus ``"cuda"`` on CUDA)."""


class RunRng:
    """The global generator states of one run, for the named ``streams``."""

    def __init__(self, seed: int, streams: Sequence[str] = ALL_STREAMS) -> None:
        unknown = set(streams) - set(_STREAMS)
        if unknown:
            raise ValueError(f"unknown RNG streams {sorted(unknown)}; known: {STREAMS}")
        self.streams = tuple(streams)
        outer = self._capture()
        for name in self.streams:
            _STREAMS[name][2](derive_seed(seed, name))
        self._state = self._capture()
        self._install(outer)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this run's states the global ones for the duration of the block."""
        outer = self._capture()
        self._install(self._state)
        try:
            yield
        finally:
            self._state = self._capture()
            self._install(outer)

    def _capture(self) -> list[Any]:
        return [_STREAMS[name][0]() for name in self.streams]

    def _install(self, states: list[Any]) -> None:
        for name, state in zip(self.streams, states):
            _STREAMS[name][1](state)


def check_seed(field: str, seed: int) -> int:
    """``seed`` as an int if it is a non-negative integer (any size, as Gymnasium accepts),
    else ``ValueError`` naming ``field``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {seed!r}")
    return int(seed)


def derive_seed(seed: int, name: str) -> int:
    """A 32-bit seed for the consumer ``name`` (a global stream, a library's own seeding),
    derived from the run's ``seed`` with numpy's ``SeedSequence``.

    Any non-negative ``seed`` works (``2**100`` too), and every consumer gets an independent,
    well-mixed value in ``[0, 2**31)``: below every library's limit (``np.random.seed``
    takes ``< 2**32``, and stable-baselines3 seeds inner environment ``i`` with ``seed + i``).
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(_DERIVED, zlib.crc32(name.encode())))
    return int(sequence.generate_state(1, np.uint32)[0] >> 1)


def perturbation_generator(seed: int, name: str) -> np.random.Generator:
    """A generator for one intervention's noise, independent of the run's training randomness.

    Seeded through ``SeedSequence`` from the run's seed and the intervention's name (with a
    stable hash, not Python's salted ``hash``), so a perturbed branch and its unperturbed fork
    share every training draw: the difference between them is the perturbation alone (common
    random numbers).
    """
    key = (_PERTURBATION, zlib.crc32(name.encode()))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# Spawn-key prefixes that keep derived seeds and perturbation streams apart.
_DERIVED, _PERTURBATION = 0, 1


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from a numpy generator (advances the numpy generator once)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))
