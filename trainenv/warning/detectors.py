"""Early-warning detectors: streaming scores over a run's telemetry that may precede collapse.

Detectors observe; they never act (controllers in ``agents/`` may act on them). Each turns one
value per step into a score, higher meaning more alarming, and alarms when the score exceeds
its ``threshold``. Scores are comparable within a detector, not across detectors: to compare
detectors fairly, calibrate each threshold to the same false-alarm rate on unperturbed runs
with :func:`calibrate_threshold`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np

from trainenv.core.deviation import Detector, EmaZScore, SelfDeviation

__all__ = [
    "Cusum",
    "Detector",
    "GradNormZScore",
    "LossSpike",
    "MetaStateDeviation",
    "SelfDeviation",
    "calibrate_threshold",
    "threshold_at",
]


class LossSpike(Detector):
    """Relative departure of the loss above its running mean (Lightning's spike detection)::

        score_t = (loss_t - mean(loss_{t-w..t-1})) / |mean(loss_{t-w..t-1})|

    Args:
        threshold: Relative tolerance (0.5: alarm when the loss is 50 % above its running mean).
        window: Previous values in the running mean; the score is 0 until it is full.
    """

    def __init__(self, threshold: float = 0.5, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        super().__init__(threshold)

    def reset(self) -> None:
        self._recent: deque[float] = deque(maxlen=self.window)

    def update(self, value: float) -> float:
        if not math.isfinite(value):
            return math.inf
        score = 0.0
        if len(self._recent) == self.window:
            mean = sum(self._recent) / self.window
            score = (value - mean) / max(abs(mean), 1e-12)
        self._recent.append(value)
        return score


class GradNormZScore(EmaZScore):
    """z-score of the gradient norm against its EMA mean and variance (as in ZClip)::

        z_t = (g_t - mu_{t-1}) / sigma_{t-1},   mu, sigma^2: EMAs with factor ``alpha``

    A spike is folded into the EMAs clipped to ``mu + clip_z * sigma`` (ZClip's update), so one
    outlier does not blind the detector to the next.
    """

    def __init__(
        self, threshold: float = 3.0, alpha: float = 0.97, warmup: int = 10, clip_z: float = 3.0
    ) -> None:
        self.clip_z = clip_z
        super().__init__(threshold, alpha, warmup)

    def update(self, value: float) -> float:
        if not math.isfinite(value):
            return math.inf
        z = self._z(np.asarray(value, dtype=np.float64))
        return 0.0 if z is None else float(z)

    def _absorbed(self, value: np.ndarray) -> np.ndarray:
        return np.minimum(value, self._mean + self.clip_z * np.sqrt(self._var))


class Cusum(EmaZScore):
    """One-sided CUSUM on the standardised loss::

        S_t = max(0, S_{t-1} + z_t - drift),  z_t = (loss_t - mu_{t-1}) / sigma_{t-1}

    with ``mu``, ``sigma`` EMAs of the loss. Alarms when ``S_t > threshold``: a sustained rise
    alarms even if no single step is a spike.
    """

    def __init__(
        self, threshold: float = 8.0, drift: float = 0.5, alpha: float = 0.97, warmup: int = 10
    ) -> None:
        self.drift = drift
        super().__init__(threshold, alpha, warmup)

    def reset(self) -> None:
        super().reset()
        self._sum = 0.0

    def update(self, value: float) -> float:
        if not math.isfinite(value):
            return math.inf
        z = self._z(np.asarray(value, dtype=np.float64))
        if z is not None:
            self._sum = max(0.0, self._sum + float(z) - self.drift)
        return self._sum


def calibrate_threshold(
    detector: Detector, reference_runs: Iterable[Iterable[float]], false_alarm_rate: float
) -> float:
    """Set ``detector.threshold`` so that a share ``false_alarm_rate`` of the steps of
    unperturbed ``reference_runs`` would alarm (the score quantile); return it."""
    scores = (detector.scores(run) for run in reference_runs)  # scored after validation
    detector.threshold = threshold_at(scores, false_alarm_rate)
    return detector.threshold


def threshold_at(scores: Iterable[np.ndarray], false_alarm_rate: float) -> float:
    """The ``1 - false_alarm_rate`` quantile of the finite ``scores`` of unperturbed runs
    (each an array of per-step scores): the threshold a share ``false_alarm_rate`` of their
    steps exceeds."""
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    pooled = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    return float(np.quantile(pooled[np.isfinite(pooled)], 1 - false_alarm_rate))


class MetaStateDeviation(Detector):
    """Threshold on the meta-state's deviation from its reference band::

        score_t = min(dev_{t-m+1}, ..., dev_t),   m = persistence

    ``update`` takes ``dev_t``, the env's ``info["deviation"]``: the Mahalanobis distance of
    the latent from unperturbed reference runs at the same training progress (see
    :class:`~trainenv.core.band.ReferenceBand`; under the band ``dev^2`` is chi-squared with
    ``d`` degrees of freedom, ``d`` the latent dimension). With ``persistence`` ``m > 1`` an
    alarm needs ``m`` consecutive steps above the threshold; the score is 0 until ``m`` values
    are in. ``None`` or NaN (no band) scores 0; ``+inf`` alarms.
    """

    def __init__(self, threshold: float = 4.0, persistence: int = 1) -> None:
        if persistence < 1:
            raise ValueError(f"persistence must be >= 1, got {persistence}")
        self.persistence = persistence
        super().__init__(threshold)

    def reset(self) -> None:
        self._recent: deque[float] = deque(maxlen=self.persistence)

    def update(self, value: float | None) -> float:
        self._recent.append(0.0 if value is None or math.isnan(value) else float(value))
        return min(self._recent) if len(self._recent) == self.persistence else 0.0
