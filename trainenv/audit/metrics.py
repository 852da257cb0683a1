"""Stability metrics: a perturbed run against its unperturbed fork, and margins over a grid.

Notation. Both branches start from the same state at the onset. ``b_h`` is the unperturbed
branch's normalised performance ``p`` (0 at chance, 1 at the ceiling, see
:class:`~trainenv.env.TrainEnv`) ``h`` steps after the onset, ``x_h`` the perturbed branch's,
for ``h = 1..H`` (``H`` the horizon). The gap is ``g_h = b_h - x_h`` (positive: the perturbed
run is behind). A branch the env's collapse rule ended early counts as lost: its ``p`` is 0
for the rest of the horizon (the runner pads it so).

Per run: :func:`drawdown`, :func:`recovery_time`, :func:`is_collapsed`, :func:`area_between`,
:func:`final_gap` (all in units of ``p``, times in steps). Over a magnitude grid:
:func:`margin` (the stability margin), :func:`is_monotone` (whether the collapse curve never
falls) and :func:`bootstrap_ci` for the margin's confidence interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

Censoring = Literal["none", "above", "below"]
"""Where a margin lies relative to the tested grid: ``"above"``, no tested magnitude made half
of the seeds collapse (the margin is at least the largest); ``"below"``, half or more collapsed
already at the smallest (the margin is below the grid)."""

CollapseRule = Literal["env collapse", "no recovery"]
"""Why a perturbed run counts as collapsed: ``"env collapse"``, the env's collapse rule ended
it (``terminated``); ``"no recovery"``, it was not back within the tolerance of its unperturbed
fork by the end of the horizon (``R = inf``)."""

COLLAPSE_SHARE = 0.5  # the margin is where the collapse rate first reaches this share


def gaps(baseline: ArrayLike, perturbed: ArrayLike) -> np.ndarray:
    """``g_h = b_h - x_h`` for ``h = 1..H``; both curves shape ``(H,)``, ``H >= 1``, finite."""
    b, x = np.asarray(baseline, dtype=float), np.asarray(perturbed, dtype=float)
    if b.ndim != 1 or b.shape != x.shape or len(b) == 0:
        raise ValueError(
            f"curves must be 1-D of equal, non-zero length, got {b.shape} and {x.shape}"
        )
    if not (np.isfinite(b).all() and np.isfinite(x).all()):
        raise ValueError("curves must be finite (pad a collapsed branch with 0)")
    return b - x


def drawdown(baseline: ArrayLike, perturbed: ArrayLike) -> float:
    """Largest gap below the unperturbed branch: ``max(0, max_h g_h)``, in units of ``p``."""
    return max(0.0, float(gaps(baseline, perturbed).max()))


def recovery_time(baseline: ArrayLike, perturbed: ArrayLike, tolerance: float) -> float:
    """Steps after the onset until the run is back within ``tolerance`` below the unperturbed
    branch and stays there::

        R = max{h : g_h > tolerance}    (0 if the run never left the band)
        R = inf                         if g_H > tolerance (not back by the end of the horizon)

    One-sided: being ahead of the unperturbed branch is not damage.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    g = gaps(baseline, perturbed)
    outside = np.flatnonzero(g > tolerance)
    if len(outside) == 0:
        return 0.0
    last = int(outside[-1]) + 1  # h is 1-based
    return math.inf if last == len(g) else float(last)


def collapse_rule(env_collapsed: bool, recovery: float) -> CollapseRule | None:
    """The rule that counts a run as collapsed (the env's first), or ``None`` if neither does:
    see :data:`CollapseRule`. ``recovery`` is :func:`recovery_time` (NaN: unknown, no rule)."""
    if env_collapsed:
        return "env collapse"
    return "no recovery" if math.isinf(recovery) else None


def is_collapsed(env_collapsed: bool, recovery: float) -> bool:
    """Collapsed: the env's collapse rule fired, or the run never recovered (``R = inf``)."""
    return collapse_rule(env_collapsed, recovery) is not None


def area_between(baseline: ArrayLike, perturbed: ArrayLike) -> float:
    """Area between the curves over the horizon, normalised by it: ``(1/H) sum_h |g_h|``.

    In units of ``p``: 0 for identical curves, at most 1.
    """
    return float(np.abs(gaps(baseline, perturbed)).mean())


def final_gap(baseline: ArrayLike, perturbed: ArrayLike) -> float:
    """``g_H``: how far behind (positive) or ahead (negative) the run ends the horizon."""
    return float(gaps(baseline, perturbed)[-1])


@dataclass(frozen=True)
class RunMetrics:
    """The metrics of one perturbed run (see the module docstring for the notation)."""

    drawdown: float
    recovery_time: float
    collapsed: bool
    area: float
    final_gap: float


def run_metrics(
    baseline: ArrayLike, perturbed: ArrayLike, tolerance: float, env_collapsed: bool
) -> RunMetrics:
    """All per-run metrics of a perturbed branch against its unperturbed fork."""
    recovery = recovery_time(baseline, perturbed, tolerance)
    return RunMetrics(
        drawdown=drawdown(baseline, perturbed),
        recovery_time=recovery,
        collapsed=is_collapsed(env_collapsed, recovery),
        area=area_between(baseline, perturbed),
        final_gap=final_gap(baseline, perturbed),
    )


def margin(
    magnitudes: ArrayLike, collapse_rates: ArrayLike, log_scale: bool
) -> tuple[float, Censoring]:
    """The stability margin: the magnitude where the collapse rate first reaches one half.

    With the grid ``m_1 < ... < m_n`` and collapse rates ``c_i``, let ``j`` be the first index
    with ``c_j >= 1/2``. If there is none the margin is ``m_n`` (censored ``"above"``: at least
    the largest magnitude); if ``j = 1`` it is ``m_1`` (censored ``"below"``). Otherwise the
    rate is interpolated between ``(m_{j-1}, c_{j-1})`` and ``(m_j, c_j)`` to where it reaches
    ``1/2``::

        t = (1/2 - c_{j-1}) / (c_j - c_{j-1})          (0 < t <= 1)
        margin = m_{j-1} * (m_j / m_{j-1}) ** t      (log-scale interventions)
        margin = m_{j-1} + (m_j - m_{j-1}) * t       (linear ones)

    So the margin is never above a magnitude that already collapsed half the seeds, whatever
    the rates do at larger magnitudes (a curve that falls again, see :func:`is_monotone`, does
    not move it up). Returns ``(margin, censoring)``; ``(nan, "none")`` if a rate is NaN (no
    valid seed).
    """
    m, c = np.asarray(magnitudes, dtype=float), np.asarray(collapse_rates, dtype=float)
    if m.ndim != 1 or m.shape != c.shape or len(m) == 0:
        raise ValueError(
            f"magnitudes and rates must be 1-D of equal length, got {m.shape}, {c.shape}"
        )
    if not (np.diff(m) > 0).all() or not (m > 0).all():
        raise ValueError(f"magnitudes must be positive and strictly increasing, got {m.tolist()}")
    if np.isnan(c).any():
        return math.nan, "none"
    reached = np.flatnonzero(c >= COLLAPSE_SHARE)
    if len(reached) == 0:
        return float(m[-1]), "above"
    j = int(reached[0])
    if j == 0:
        return float(m[0]), "below"
    t = (COLLAPSE_SHARE - c[j - 1]) / (c[j] - c[j - 1])
    if log_scale:
        return float(m[j - 1] * (m[j] / m[j - 1]) ** t), "none"
    return float(m[j - 1] + (m[j] - m[j - 1]) * t), "none"


def is_monotone(collapse_rates: ArrayLike) -> bool:
    """Whether the collapse rate never falls as the magnitude grows (rates shape ``(n,)`` on an
    increasing grid; NaN rates, magnitudes without a valid seed, are skipped). A curve that
    falls says the seeds disagree more than the grid resolves: the margin (where the rate
    first reaches one half) is then the cautious reading."""
    c = np.asarray(collapse_rates, dtype=float)
    if c.ndim != 1:
        raise ValueError(f"collapse_rates must be 1-D, got shape {c.shape}")
    c = c[~np.isnan(c)]
    # Rates are means of per-seed means: equal shares may differ in the last bits.
    return bool((np.diff(c) >= -1e-9).all())


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over resampled units (seeds).

    ``statistic(draws)`` gets ``draws``, shape ``(n_boot, n_units)``: each row the indices of
    one resample of the units, drawn with replacement; it returns the ``n_boot`` replicate
    values. Seeds are the independent unit of an audit, so a seed's results at every
    magnitude are resampled together. NaN replicates are dropped; the interval is
    ``(nan, nan)`` if none is finite. Deterministic for a given ``seed``.
    """
    if n_units < 1 or n_boot < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"need n_units >= 1, n_boot >= 1, 0 < confidence < 1; "
            f"got {n_units}, {n_boot}, {confidence}"
        )
    draws = np.random.default_rng(seed).integers(n_units, size=(n_boot, n_units))
    values = np.asarray(statistic(draws), dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mean_ci(
    values: np.ndarray, n_boot: int = 1000, confidence: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-unit ``values`` (shape ``(n_units,)``; NaN units
    are left out of each resample's mean)."""
    return bootstrap_ci(
        lambda draws: nanmean(values[draws], axis=1), len(values), n_boot, confidence
    )


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without the warning for all-NaN slices (they give NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)
