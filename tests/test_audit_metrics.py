"""Stability metrics on hand-made curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainenv.audit import metrics as M

BASE = [0.8, 0.8, 0.8, 0.8, 0.8]


def test_identical_curves_have_no_damage() -> None:
    m = M.run_metrics(BASE, BASE, tolerance=0.05, env_collapsed=False)
    assert m == M.RunMetrics(
        drawdown=0.0, recovery_time=0.0, collapsed=False, area=0.0, final_gap=0.0
    )


def test_dip_and_recovery() -> None:
    x = [0.3, 0.5, 0.78, 0.8, 0.8]  # gaps 0.5, 0.3, 0.02, 0, 0
    assert M.drawdown(BASE, x) == pytest.approx(0.5)
    assert M.recovery_time(BASE, x, tolerance=0.05) == 2.0
    assert M.recovery_time(BASE, x, tolerance=0.4) == 1.0
    assert M.recovery_time(BASE, x, tolerance=0.5) == 0.0  # never outside a 0.5 band
    assert M.area_between(BASE, x) == pytest.approx((0.5 + 0.3 + 0.02) / 5)
    assert M.final_gap(BASE, x) == pytest.approx(0.0)
    assert not M.run_metrics(BASE, x, 0.05, env_collapsed=False).collapsed


def test_recovery_must_last() -> None:
    x = [0.5, 0.8, 0.5, 0.8, 0.8]  # back at h=2, out again at h=3, back for good at h=4
    assert M.recovery_time(BASE, x, tolerance=0.1) == 3.0


def test_never_recovered_is_infinite_and_a_collapse() -> None:
    x = [0.8, 0.8, 0.6, 0.6, 0.6]
    assert math.isinf(M.recovery_time(BASE, x, tolerance=0.1))
    m = M.run_metrics(BASE, x, 0.1, env_collapsed=False)
    assert m.collapsed and m.final_gap == pytest.approx(0.2)
    assert M.is_collapsed(env_collapsed=True, recovery=0.0)  # the env's rule alone suffices


def test_being_ahead_is_not_damage_but_counts_in_the_area() -> None:
    x = [0.9, 1.0, 0.9, 0.9, 0.9]
    assert M.drawdown(BASE, x) == 0.0
    assert M.recovery_time(BASE, x, tolerance=0.0) == 0.0
    assert M.final_gap(BASE, x) == pytest.approx(-0.1)
    assert M.area_between(BASE, x) == pytest.approx((0.1 + 0.2 + 0.1 + 0.1 + 0.1) / 5)


def test_a_lost_run_padded_with_zero() -> None:
    x = [0.4, 0.1, 0.0, 0.0, 0.0]  # the env's collapse rule ended it after 2 steps
    m = M.run_metrics(BASE, x, 0.05, env_collapsed=True)
    assert m.drawdown == pytest.approx(0.8) and m.collapsed and math.isinf(m.recovery_time)


@pytest.mark.parametrize(
    ("b", "x"), [([], []), ([0.1, 0.2], [0.1]), ([[0.1]], [[0.1]]), ([0.1, np.nan], [0.1, 0.1])]
)
def test_bad_curves_are_rejected(b: list, x: list) -> None:
    with pytest.raises(ValueError, match="curves"):
        M.drawdown(b, x)


def test_negative_tolerance_is_rejected() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        M.recovery_time(BASE, BASE, tolerance=-0.1)


def test_margin_interpolates_geometrically_on_log_scale() -> None:
    # rates cross 1/2 halfway between 10 and 1000 (rates 0 and 1): the geometric midpoint
    assert M.margin([1, 10, 1000], [0.0, 0.0, 1.0], log_scale=True) == (
        pytest.approx(100.0),
        "none",
    )
    assert M.margin([1, 10, 1000], [0.0, 0.0, 1.0], log_scale=False) == (
        pytest.approx(505.0),
        "none",
    )
    # rates 0.25 -> 0.75 reach 1/2 at t = 1/2: the geometric midpoint of 2 and 8
    assert M.margin([2.0, 8.0], [0.25, 0.75], log_scale=True) == (pytest.approx(4.0), "none")


def test_margin_censoring_at_the_grid_edges() -> None:
    assert M.margin([1, 10], [0.0, 0.25], log_scale=True) == (10.0, "above")
    assert M.margin([1, 10], [0.5, 1.0], log_scale=True) == (1.0, "below")  # half is reached
    value, censored = M.margin([1, 10], [np.nan, 0.0], log_scale=True)
    assert math.isnan(value) and censored == "none"


def test_margin_rejects_an_unordered_grid() -> None:
    with pytest.raises(ValueError, match="increasing"):
        M.margin([10, 1], [0.0, 1.0], log_scale=True)


def test_bootstrap_interval_of_a_mean() -> None:
    values = np.array([0.0, 1.0] * 10)

    def mean(draws: np.ndarray) -> np.ndarray:
        assert draws.shape == (2000, 20)
        return values[draws].mean(axis=1)

    lo, hi = M.bootstrap_ci(mean, len(values), n_boot=2000)
    assert lo < 0.5 < hi and lo > 0.2 and hi < 0.8
    assert (lo, hi) == M.bootstrap_ci(mean, len(values), n_boot=2000)
    assert M.bootstrap_ci(lambda d: np.full(len(d), 3.0), 5) == (3.0, 3.0)


def test_bootstrap_drops_nan_replicates_and_validates() -> None:
    assert all(math.isnan(v) for v in M.bootstrap_ci(lambda d: np.full(len(d), np.nan), 3))
    half = M.bootstrap_ci(lambda d: np.where(np.arange(len(d)) % 2, np.nan, 1.0), 3)
    assert half == (1.0, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        M.bootstrap_ci(lambda d: np.zeros(len(d)), 3, confidence=1.5)
