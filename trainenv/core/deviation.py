"""Streaming deviation scores the environment reports, and the detector protocol they share.

A detector turns one value per step into a score, higher meaning more alarming, and alarms when
the score exceeds its ``threshold``. The env scores every meta-state latent with
:class:`SelfDeviation` (``info["self_deviation"]``); the early-warning detectors in
:mod:`trainenv.warning` build on the same base classes.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable

import numpy as np


class Detector(abc.ABC):
    """A streaming detector: ``update(value) -> score``; alarm when ``score > threshold``."""

    def __init__(self, threshold: float) -> None:
        if math.isnan(threshold):
            raise ValueError("threshold must be a number")
        self.threshold = float(threshold)
        self.reset()

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the stream (call at the start of every run)."""

    @abc.abstractmethod
    def update(self, value: float) -> float:
        """Take the next value; return the score (``inf`` for a non-finite value)."""

    def alarm(self, score: float) -> bool:
        return score > self.threshold

    def scores(self, values: Iterable[float]) -> np.ndarray:
        """Scores of a whole series, from a fresh state."""
        self.reset()
        return np.array([self.update(v) for v in values])


class EmaZScore(Detector):
    """EMA mean/variance bookkeeping for z-score detectors (elementwise for vectors).

    The first ``warmup`` values set the mean and variance (score 0 meanwhile); afterwards each
    value is scored against the EMAs *before* it, then absorbed with factor ``alpha``.
    """

    def __init__(self, threshold: float, alpha: float, warmup: int) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if warmup < 2:
            raise ValueError(f"warmup must be >= 2, got {warmup}")
        self.alpha, self.warmup = alpha, warmup
        super().__init__(threshold)

    def reset(self) -> None:
        self._seen: list[np.ndarray] = []
        self._mean = self._var = np.zeros(())

    def _z(self, value: np.ndarray) -> np.ndarray | None:
        if len(self._seen) < self.warmup:
            self._seen.append(value)
            if len(self._seen) == self.warmup:
                self._mean, self._var = np.mean(self._seen, axis=0), np.var(self._seen, axis=0)
            return None
        z = (value - self._mean) / np.sqrt(np.maximum(self._var, 1e-24))
        self._absorb(self._absorbed(value))
        return z

    def _absorbed(self, value: np.ndarray) -> np.ndarray:
        """The value folded into the EMAs (subclasses may limit outliers)."""
        return value

    def _absorb(self, value: np.ndarray) -> None:
        delta = value - self._mean
        self._mean = self._mean + (1 - self.alpha) * delta
        self._var = self.alpha * (self._var + (1 - self.alpha) * delta * delta)


class SelfDeviation(EmaZScore):
    """Distance of the meta-state from the run's own recent history (no reference runs)::

        score_t = || (z_t - mu_{t-1}) / sigma_{t-1} ||_2 / sqrt(d)

    with ``mu``, ``sigma^2`` per-dimension EMAs of the latent ``z`` (a diagonal Mahalanobis
    distance, normalised by the dimension ``d``). ``update`` takes the latent vector.
    """

    def __init__(self, threshold: float = 3.0, alpha: float = 0.9, warmup: int = 10) -> None:
        super().__init__(threshold, alpha, warmup)

    def update(self, value: float | np.ndarray) -> float:
        latent = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if not np.isfinite(latent).all():
            return math.inf
        z = self._z(latent)
        return 0.0 if z is None else float(np.linalg.norm(z) / math.sqrt(latent.size))
