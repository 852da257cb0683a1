"""Claim 2 as a dose-response: a stochasticity knob at several levels, each paired with the
recipe without it (common random numbers: same seeds, same perturbations), and the trend of
the paired effect over the levels.

The trend is the least-squares slope of the mean paired drawdown difference (with minus
without, units of p) against the level's rank (0 for off, 1, 2, ... for the levels in
increasing order), so it reads "p of drawdown per level step": below 0, more stochasticity
buffers more. Its CI is a percentile bootstrap over seeds, a seed's pairs at every level
resampled together (the levels share the seed's prefix and perturbations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainenv.audit.metrics import bootstrap_ci
from trainenv.findings.claims import Buffering, buffering
from trainenv.findings.verdicts import CONFIDENCE, verdict_dose

__all__ = ["DoseResponse", "Stochasticity", "dose_response", "trend"]


@dataclass
class DoseResponse:
    """One stochasticity knob at its levels against the recipe without it.

    Attributes:
        knob: The knob's intervention name (``grad_noise``, ``entropy_bonus``, ...).
        levels: The knob's magnitudes, increasing; each is one recipe held at it.
        effects: Per level, claim 2's paired comparison with the recipe without the knob.
        slope, slope_lo, slope_hi: The trend (p of drawdown per level step) and its CI.
        verdict: :func:`~trainenv.findings.verdicts.verdict_dose` of the trend and levels.
    """

    knob: str
    levels: tuple[float, ...]
    effects: tuple[Buffering, ...]
    slope: float
    slope_lo: float
    slope_hi: float
    verdict: str

    @property
    def pairs(self) -> pd.DataFrame:
        """Every level's pairs, with its ``level`` column."""
        return pd.concat(
            [
                e.pairs.assign(knob=self.knob, level=level)
                for level, e in zip(self.levels, self.effects)
            ],
            ignore_index=True,
        )

    @property
    def width(self) -> float:
        """The width of the trend's CI (what the sample-size rule watches)."""
        return self.slope_hi - self.slope_lo


@dataclass
class Stochasticity:
    """Claim 2 on one paradigm: a dose-response per knob; the verdict is the first knob's
    (the paradigm's own stochasticity knob), the others are reported beside it."""

    knobs: tuple[DoseResponse, ...]

    @property
    def verdict(self) -> str:
        return self.knobs[0].verdict

    @property
    def primary(self) -> DoseResponse:
        return self.knobs[0]


def trend(
    differences: np.ndarray, seeds: np.ndarray, ranks: np.ndarray, n_boot: int, seed: int = 0
) -> tuple[float, float, float]:
    """The slope of the mean paired difference against the level rank (rank 0, off, has
    difference 0 by construction), with a percentile bootstrap CI over seeds.

    Args:
        differences: One paired difference per pair, shape ``(pairs,)``.
        seeds: Each pair's seed, shape ``(pairs,)``.
        ranks: Each pair's level rank, ``1 .. L``, shape ``(pairs,)``.

    Returns ``(slope, lo, hi)`` in units of the differences per level step.
    """
    differences, seeds, ranks = (np.asarray(a) for a in (differences, seeds, ranks))
    if not differences.shape == seeds.shape == ranks.shape or len(np.unique(ranks)) < 2:
        raise ValueError(
            f"need one seed and level rank per difference and >= 2 levels, got shapes "
            f"{differences.shape}, {seeds.shape}, {ranks.shape}"
        )
    units = np.unique(seeds)
    levels = np.unique(ranks)
    # per seed and level: the sum and count of its pairs (a resample adds them up)
    sums = np.array(
        [[differences[(seeds == s) & (ranks == r)].sum() for r in levels] for s in units]
    )
    counts = np.array([[((seeds == s) & (ranks == r)).sum() for r in levels] for s in units])
    x = np.concatenate([[0.0], levels.astype(float)])
    x = x - x.mean()

    def slope(draws: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (n_boot, levels)
        y = np.concatenate([np.zeros((len(draws), 1)), means], axis=1)
        return (y * x).sum(axis=1) / (x**2).sum()

    point = float(slope(np.arange(len(units))[None, :])[0])
    lo, hi = bootstrap_ci(slope, len(units), n_boot, CONFIDENCE, seed)
    return point, lo, hi


def dose_response(
    runs: pd.DataFrame, without: str, with_: Mapping[float, str], knob: str, n_boot: int
) -> DoseResponse:
    """Claim 2's dose-response from an audit's runs table: ``with_`` maps each level of
    ``knob`` to its recipe's name; ``without`` is the recipe without the knob."""
    if len(with_) < 2:
        raise ValueError(f"a dose-response needs >= 2 levels, got {sorted(with_)}")
    levels = tuple(sorted(with_))
    effects = tuple(buffering(runs, without, with_[level], n_boot) for level in levels)
    ranks = np.concatenate([np.full(len(e.pairs), i + 1) for i, e in enumerate(effects)])
    differences = np.concatenate([e.pairs["d_drawdown"].to_numpy(float) for e in effects])
    seeds = np.concatenate([e.pairs["seed"].to_numpy() for e in effects])
    slope, lo, hi = trend(differences, seeds, ranks, n_boot)
    verdict = verdict_dose(lo, hi, [e.verdict for e in effects], len(np.unique(seeds)))
    return DoseResponse(knob, levels, effects, slope, lo, hi, verdict)
