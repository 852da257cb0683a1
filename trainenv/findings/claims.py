"""The statistics of the three claims, from an audit's results (claims 1 and 2) or early-warning
traces (claim 3), and :class:`Findings`, the results of a findings run.

1. *High final performance is frequently decoupled from training stability*: over a grid of
   recipes x seeds, Spearman's rank correlation between final performance and a stability
   score from a perturbation audit (:func:`decoupling`).
2. *Controlled stochasticity buffers learning dynamics*: the same perturbations with and
   without the trainer's stochasticity knob held on; the paired difference in drawdown and in
   collapse rate (:func:`buffering`), at each of the knob's levels, and its trend over them
   (:mod:`trainenv.findings.dose`).
3. *Meta-state deviations precede collapse*: the early-warning evaluation of
   :mod:`trainenv.warning` (:func:`early_warning`), on the *leak-free* meta-state (dynamics
   channels only), beside the full one and a logistic-regression baseline.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from trainenv.audit.metrics import bootstrap_ci
from trainenv.audit.store import ResultStore
from trainenv.core.metastate import MetaStateEncoder
from trainenv.findings.config import FindingsConfig
from trainenv.findings.verdicts import (
    CONFIDENCE,
    overall,
    verdict_buffering,
    verdict_decoupling,
    verdict_warning,
)
from trainenv.warning.evaluation import CLAIM3, LEARNED, PRIMARY, evaluate_detectors
from trainenv.warning.metastates import fit_meta_states, with_meta_states
from trainenv.warning.simulation import CALIBRATION, Trace

if TYPE_CHECKING:
    from trainenv.findings.dose import Stochasticity
    from trainenv.findings.sampling import SampleSize

__all__ = [
    "Buffering",
    "Decoupling",
    "EarlyWarning",
    "Findings",
    "buffering",
    "decoupling",
    "early_warning",
    "paired_differences",
    "paired_effect",
    "rank_correlation",
    "recipe_outcomes",
]

MIN_BEST_P = 0.05  # an unperturbed branch below this p has nothing to lose: no stability score


# -- claim 1: decoupling --------------------------------------------------------------------
def recipe_outcomes(
    store: ResultStore, recipes: Sequence[str], onset: int, seeds: int | None = None
) -> pd.DataFrame:
    """Per recipe and seed: ``final_p`` and ``stability`` from an audit's results (seeds
    ``0 .. seeds - 1`` only, if given: a store may hold more).

    ``final_p`` is the unperturbed branch's ``p`` at its last step. ``stability`` is
    ``1 - mean relative drawdown`` over the seed's perturbed runs, a run's relative drawdown
    being its drawdown over the unperturbed branch's best ``p`` in the horizon (the share of
    what there was to lose that it lost at worst, in ``[0, 1]``). A recipe x seed whose
    unperturbed run collapsed scores 0 on both; one whose unperturbed branch never reaches
    ``p = MIN_BEST_P`` has no stability score (NaN).
    """
    runs = store.runs()
    runs = runs[runs["recipe"].isin(recipes) & (runs["seed"] < (seeds or math.inf))]
    base = runs[runs["kind"] == "baseline"]
    steps = store.steps(base["run_id"])
    rows = []
    for b in base.itertuples():
        perturbed = runs[(runs["kind"] == "perturbed") & (runs["recipe"] == b.recipe)
                         & (runs["seed"] == b.seed) & (runs["status"] == "ok")]  # fmt: skip
        if b.status != "ok" or bool(b.collapsed):
            final, stability = 0.0, 0.0
        else:
            mine = steps[steps["run_id"] == b.run_id].sort_values("step")
            final = float(mine["p"].iloc[-1])
            best = float(mine.loc[mine["step"] > onset, "p"].max())
            relative = np.minimum(1.0, perturbed["drawdown"].to_numpy(float) / best)
            stability = 1.0 - float(relative.mean()) if best >= MIN_BEST_P else math.nan
        rows.append({"recipe": b.recipe, "seed": int(b.seed), "final_p": final,
                     "stability": stability})  # fmt: skip
    return pd.DataFrame(rows)


def rank_correlation(
    performance: np.ndarray,
    stability: np.ndarray,
    n_boot: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Spearman's rho between the recipe means of two ``(recipes, seeds)`` arrays, with a
    two-level percentile bootstrap CI (recipes and seeds both resampled: the claim is about
    recipes in general, and each recipe's means carry seed noise). NaN cells are skipped.

    Returns ``(rho, lo, hi)``.
    """
    performance, stability = np.asarray(performance, float), np.asarray(stability, float)
    if performance.shape != stability.shape or performance.ndim != 2 or performance.shape[0] < 3:
        raise ValueError(
            f"need two (recipes >= 3, seeds) arrays of one shape, got {performance.shape} "
            f"and {stability.shape}"
        )
    n_recipes, n_seeds = performance.shape
    recipe_rng = np.random.default_rng(seed + 1)

    def statistic(draws: np.ndarray) -> np.ndarray:
        out = []
        for row in draws:
            r = recipe_rng.integers(n_recipes, size=n_recipes)
            out.append(_spearman(performance[np.ix_(r, row)], stability[np.ix_(r, row)]))
        return np.array(out)

    rho = _spearman(performance, stability)
    lo, hi = bootstrap_ci(statistic, n_seeds, n_boot, confidence, seed)
    return rho, lo, hi


def _spearman(performance: np.ndarray, stability: np.ndarray) -> float:
    """Spearman's rho of the row means (NaN if either is constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input and all-NaN rows: NaN, dropped later
        x, y = np.nanmean(performance, axis=1), np.nanmean(stability, axis=1)
        keep = ~(np.isnan(x) | np.isnan(y))
        return float(spearmanr(x[keep], y[keep]).statistic) if keep.sum() >= 3 else math.nan


@dataclass
class Decoupling:
    """Claim 1 on one paradigm."""

    outcomes: pd.DataFrame  # per recipe x seed
    recipes: pd.DataFrame  # per recipe: means and ranks
    rho: float
    lo: float
    hi: float
    discordant: list[str]  # top half on one measure, bottom half on the other
    verdict: str


def decoupling(outcomes: pd.DataFrame, n_boot: int, seed: int = 0) -> Decoupling:
    """Claim 1 from :func:`recipe_outcomes`."""
    perf = outcomes.pivot(index="recipe", columns="seed", values="final_p")
    stab = outcomes.pivot(index="recipe", columns="seed", values="stability").loc[perf.index]
    rho, lo, hi = rank_correlation(perf.to_numpy(), stab.to_numpy(), n_boot, CONFIDENCE, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        recipes = pd.DataFrame({"final_p": perf.mean(axis=1), "stability": stab.mean(axis=1)})
    recipes["perf_rank"] = recipes["final_p"].rank(ascending=False, method="min")
    recipes["stab_rank"] = recipes["stability"].rank(ascending=False, method="min")
    half = len(recipes) / 2
    discordant = [
        str(name)
        for name, r in recipes.iterrows()
        if (r.perf_rank <= half) != (r.stab_rank <= half) and abs(r.perf_rank - r.stab_rank) >= half
    ]
    recipes = recipes.sort_values("perf_rank").reset_index()
    return Decoupling(outcomes, recipes, rho, lo, hi, discordant, verdict_decoupling(lo, hi))


# -- claim 2: stochasticity buffers ---------------------------------------------------------
def paired_differences(runs: pd.DataFrame, without: str, with_: str) -> pd.DataFrame:
    """The perturbed runs of recipe ``with_`` matched to those of ``without`` (same seed,
    onset, intervention and magnitude), with ``d_drawdown`` and ``d_collapsed`` (with minus
    without)."""
    keys = ["seed", "onset", "intervention", "magnitude"]

    def side(recipe: str) -> pd.DataFrame:
        rows = runs[(runs["recipe"] == recipe) & (runs["kind"] == "perturbed")
                    & (runs["status"] == "ok")]  # fmt: skip
        return rows[[*keys, "drawdown", "collapsed"]].astype({"collapsed": float})

    pairs = side(without).merge(side(with_), on=keys, suffixes=("_without", "_with"))
    pairs["d_drawdown"] = pairs["drawdown_with"] - pairs["drawdown_without"]
    pairs["d_collapsed"] = pairs["collapsed_with"] - pairs["collapsed_without"]
    return pairs


def paired_effect(
    differences: np.ndarray, seeds: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean paired difference and the standardised effect size ``d_z = mean / sd`` (of the
    pairs' differences), each with a percentile bootstrap CI over seeds (a seed's pairs are
    resampled together). Keys: ``mean``, ``mean_lo``, ``mean_hi``, ``d_z``, ``d_z_lo``,
    ``d_z_hi``, ``pairs``."""
    differences, seeds = np.asarray(differences, float), np.asarray(seeds)
    if differences.shape != seeds.shape or len(differences) < 2:
        raise ValueError(f"need >= 2 differences with one seed each, got {differences.shape}")
    units = [differences[seeds == s] for s in np.unique(seeds)]

    def mean(draws: np.ndarray) -> np.ndarray:
        return np.array([np.concatenate([units[i] for i in row]).mean() for row in draws])

    def d_z(draws: np.ndarray) -> np.ndarray:
        return np.array([_standardised(np.concatenate([units[i] for i in row])) for row in draws])

    out: dict[str, float] = {"pairs": len(differences)}
    for key, statistic in (("mean", mean), ("d_z", d_z)):
        out[key] = float(statistic(np.arange(len(units))[None, :])[0])
        out[f"{key}_lo"], out[f"{key}_hi"] = bootstrap_ci(
            statistic, len(units), n_boot, CONFIDENCE, seed
        )
    return out


def _standardised(values: np.ndarray) -> float:
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean() / sd) if sd > 0 else math.nan


@dataclass
class Buffering:
    """Claim 2 at one level of a knob: its paired comparison with the recipe without it."""

    without: str
    with_: str
    pairs: pd.DataFrame
    drawdown: dict[str, float]
    collapse: dict[str, float]
    verdict: str


def buffering(runs: pd.DataFrame, without: str, with_: str, n_boot: int) -> Buffering:
    """Claim 2 at one level, from an audit's runs table: recipe ``with_`` against
    ``without``."""
    pairs = paired_differences(runs, without, with_)
    seeds = pairs["seed"].to_numpy()
    drawdown = paired_effect(pairs["d_drawdown"].to_numpy(), seeds, n_boot)
    collapse = paired_effect(pairs["d_collapsed"].to_numpy(), seeds, n_boot)
    verdict = verdict_buffering(drawdown["mean_lo"], drawdown["mean_hi"])
    return Buffering(without, with_, pairs, drawdown, collapse, verdict)


# -- claim 3: early warning -----------------------------------------------------------------
@dataclass
class EarlyWarning:
    """Claim 3 on one paradigm."""

    table: pd.DataFrame  # one row per detector (evaluate_detectors)
    traces: list[Trace]  # the evaluated runs, with their meta-states' inputs
    horizon: int  # steps
    verdict: str
    encoders: dict[str, MetaStateEncoder] = field(default_factory=dict)  # full, leak-free
    calibration_runs: int = 0  # the unperturbed runs the encoders were fitted on

    @property
    def primary(self) -> pd.Series:
        return self.table.set_index("detector").loc[PRIMARY]


def early_warning(
    traces: list[Trace], horizon: int, false_alarm_rate: float, n_boot: int
) -> EarlyWarning:
    """Claim 3 from one paradigm's traces: its calibration runs fit the full and leak-free
    meta-states (:func:`~trainenv.warning.metastates.fit_meta_states`), the other runs are
    evaluated (:data:`~trainenv.warning.evaluation.CLAIM3` and the logistic baseline); the
    verdict is the leak-free meta-state deviation's."""
    calibration = [t for t in traces if t.scenario == CALIBRATION]
    encoders = fit_meta_states(calibration)
    evaluated = with_meta_states(traces, encoders)
    table = evaluate_detectors(evaluated, horizon, false_alarm_rate, n_boot, CONFIDENCE,
                               CLAIM3, LEARNED, PRIMARY)  # fmt: skip
    primary = table.set_index("detector").loc[PRIMARY]
    return EarlyWarning(table, evaluated, horizon, verdict_warning(primary), encoders,
                        len(calibration))  # fmt: skip


# -- all claims ---------------------------------------------------------------------------
@dataclass
class Findings:
    """The results of a findings run, per claim and paradigm."""

    config: FindingsConfig
    decoupling: dict[str, Decoupling] = field(default_factory=dict)
    buffering: dict[str, Stochasticity] = field(default_factory=dict)
    warning: dict[str, EarlyWarning] = field(default_factory=dict)
    sample_sizes: dict[str, SampleSize] = field(default_factory=dict)  # claims 1-2's seeds
    wall_s: float = math.nan
    resumed: bool = False  # runs saved by an earlier invocation were read back, not rerun

    def verdicts(self) -> dict[int, tuple[dict[str, str], str]]:
        """Per claim: the verdict per paradigm and the overall verdict."""
        out = {}
        for claim, results in ((1, self.decoupling), (2, self.buffering), (3, self.warning)):
            per = {name: r.verdict for name, r in results.items()}
            out[claim] = (per, overall(list(per.values())))
        return out
