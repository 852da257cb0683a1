"""Early-warning detectors on synthetic streams with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainenv.warning.detectors import (
    Cusum,
    GradNormZScore,
    LossSpike,
    SelfDeviation,
    calibrate_threshold,
)


def noisy(n: int, level: float = 1.0, seed: int = 0) -> np.ndarray:
    return level + 0.01 * np.random.default_rng(seed).standard_normal(n)


def first_alarm(detector, values) -> int | None:
    alarms = np.flatnonzero([detector.alarm(s) for s in detector.scores(values)])
    return int(alarms[0]) if len(alarms) else None


def test_loss_spike_fires_on_the_spike_and_not_on_noise() -> None:
    values = noisy(40)
    assert first_alarm(LossSpike(0.5), values) is None
    values[25] = 2.0
    assert first_alarm(LossSpike(0.5), values) == 25
    assert LossSpike().update(math.nan) == math.inf


def test_grad_norm_z_score_finds_a_planted_spike_and_absorbs_it() -> None:
    values = noisy(60)
    assert first_alarm(GradNormZScore(3.0), values) is None
    values[30], values[45] = 5.0, 5.0
    detector = GradNormZScore(3.0)
    alarms = np.flatnonzero([detector.alarm(s) for s in detector.scores(values)])
    assert list(alarms) == [30, 45]  # the first spike did not blind it to the second


def test_cusum_finds_a_planted_change_point_that_no_single_step_reveals() -> None:
    values = noisy(80)
    values[50:] += 0.05  # five noise stds, but 5 % of the loss: no spike to a relative rule
    assert first_alarm(LossSpike(0.5), values) is None
    step = first_alarm(Cusum(threshold=8.0, drift=0.5), values)
    assert step is not None and 50 <= step <= 60


def test_self_deviation_on_meta_state_vectors() -> None:
    rng = np.random.default_rng(1)
    latents = 0.1 * rng.standard_normal((40, 3))
    assert first_alarm(SelfDeviation(threshold=4.0), latents) is None
    latents[30] += [1.0, -1.0, 1.0]
    assert first_alarm(SelfDeviation(threshold=4.0), latents) == 30


def test_calibration_sets_the_false_alarm_rate_on_reference_runs() -> None:
    runs = [noisy(200, seed=s) for s in range(5)]
    detector = GradNormZScore()
    threshold = calibrate_threshold(detector, runs, false_alarm_rate=0.05)
    rate = np.mean(np.concatenate([detector.scores(r) for r in runs]) > threshold)
    assert detector.threshold == threshold and rate == pytest.approx(0.05, abs=0.01)


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="window"):
        LossSpike(window=0)
    with pytest.raises(ValueError, match="alpha"):
        GradNormZScore(alpha=1.0)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate_threshold(LossSpike(), [noisy(20)], 0.0)
