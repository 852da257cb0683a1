"""Early-warning evaluation: do detectors alarm before a run collapses, and how early?

The inputs are :class:`~trainenv.warning.simulation.Trace` s: reference runs and ramps per
seed, with each run's collapse onset ``T``.

**Detectors** (:data:`DETECTORS`) score every step. Each is calibrated to the same false-alarm
rate ``alpha`` on reference runs, cross-fitted by seed: the threshold applied to seed ``s``'s
runs is the ``1 - alpha`` quantile of the scores of the *other* seeds' reference runs
(:func:`~trainenv.warning.detectors.calibrate_threshold`), so the false-alarm rate reported is
out of sample.

**Statistics** per detector, with ``H`` the horizon in steps and ``k`` updates per step:

- detection rate: the share of collapses with an alarm in the ``H + 1`` steps ``T - H .. T``;
- lead time: ``T`` minus the first alarm in that window, in updates (``steps * k``, so between 0
  and ``H * k``); the median over detected collapses;
- false-alarm rate: the share of the held-out reference runs' steps that alarm (a reference
  run that collapses on its own is a collapse, not calibration material);
- alarmed survivors: the share of perturbed runs that did not collapse with an alarm at or
  after the ramp's onset (NaN if every perturbed run collapsed);
- AUROC of the score for "collapse onset within ``H`` steps": the samples are every step of the
  reference runs and the steps from the ramp's onset of the perturbed runs (before it they
  repeat the reference run of the same seed), up to ``T`` for a collapsed run; a step ``t`` is
  positive iff ``0 <= T - t <= H`` (:func:`auroc`, equal to scikit-learn's ``roc_auc_score``).

Confidence intervals: percentile bootstrap over seeds, the independent unit
(:func:`~trainenv.audit.metrics.bootstrap_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainenv.audit.metrics import bootstrap_ci
from trainenv.warning.detectors import (
    Cusum,
    Detector,
    GradNormZScore,
    LossSpike,
    MetaStateDeviation,
    SelfDeviation,
    calibrate_threshold,
)
from trainenv.warning.simulation import Trace

__all__ = ["DETECTORS", "PRIMARY", "auroc", "evaluate_detectors", "lead_time"]

DETECTORS: dict[str, tuple[Callable[[], Detector], str]] = {
    "meta-state deviation": (MetaStateDeviation, "deviation"),
    "self-deviation": (SelfDeviation, "latents"),
    "loss spike": (LossSpike, "loss"),
    "grad-norm z-score": (GradNormZScore, "grad_norm"),
    "CUSUM (loss)": (Cusum, "loss"),
}
"""Detector name -> (factory with default settings, the :class:`Trace` input it reads)."""
PRIMARY = "meta-state deviation"  # the detector claim 3 is about


@dataclass
class _SeedOutcome:
    """One detector's outcomes on one seed's runs."""

    collapses: int = 0
    leads: list[float] = field(default_factory=list)  # updates, detected collapses only
    calm_alarms: int = 0  # alarms on reference runs that did not collapse...
    calm_steps: int = 0  # ...of so many steps
    survivors: int = 0
    alarmed_survivors: int = 0
    scores: list[np.ndarray] = field(default_factory=list)  # AUROC samples, per run
    labels: list[np.ndarray] = field(default_factory=list)


def evaluate_detectors(
    traces: Sequence[Trace],
    horizon: int,
    false_alarm_rate: float = 0.02,
    n_boot: int = 1000,
    confidence: float = 0.95,
    detectors: Mapping[str, tuple[Callable[[], Detector], str]] = DETECTORS,
) -> pd.DataFrame:
    """Per detector: detection rate, median lead time (updates), false-alarm rate, alarmed
    survivors and AUROC, with bootstrap CIs over seeds (see the module docstring).

    Returns one row per detector with columns ``detector``, ``input``, ``threshold`` (median
    over the cross-fitting folds), ``collapses``, ``detected``, ``detection_rate`` (+
    ``_lo``/``_hi``), ``lead_median`` (+ ``_lo``/``_hi``), ``false_alarm_rate``, ``survivors``,
    ``alarmed_survivors``, ``auroc`` (+ ``_lo``/``_hi``).
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0 steps, got {horizon}")
    seeds = sorted({t.seed for t in traces})
    reference_seeds = {t.seed for t in traces if t.reference}
    if len(reference_seeds) < 2 or reference_seeds != set(seeds):
        raise ValueError("traces: every seed needs a reference run, and >= 2 seeds (cross-fitting)")
    rows = []
    for name, (factory, key) in detectors.items():
        outcomes, thresholds = _outcomes(traces, seeds, factory, key, horizon, false_alarm_rate)
        rows.append({"detector": name, "input": key, "threshold": float(np.median(thresholds)),
                     **_statistics(outcomes, n_boot, confidence)})  # fmt: skip
    return pd.DataFrame(rows)


def _outcomes(
    traces: Sequence[Trace],
    seeds: list[int],
    factory: Callable[[], Detector],
    key: str,
    horizon: int,
    alpha: float,
) -> tuple[list[_SeedOutcome], list[float]]:
    """Per seed (thresholds cross-fitted on the other seeds): the detector's outcomes."""
    outcomes, thresholds = [], []
    for seed in seeds:
        others = [t.inputs[key] for t in traces if _calm(t) and t.seed != seed]
        threshold = calibrate_threshold(factory(), others, alpha)
        thresholds.append(threshold)
        outcome = _SeedOutcome()
        for trace in (t for t in traces if t.seed == seed):
            _record(outcome, trace, factory().scores(trace.inputs[key]), threshold, horizon)
        outcomes.append(outcome)
    return outcomes, thresholds


def _record(
    outcome: _SeedOutcome, trace: Trace, scores: np.ndarray, threshold: float, horizon: int
) -> None:
    """Add one run's alarms, lead time and AUROC samples to its seed's outcome."""
    alarms = scores > threshold
    first = 0 if trace.ramp_onset is None else trace.ramp_onset - 1  # 0-based, first sample
    last = len(scores) if trace.collapse_onset is None else trace.collapse_onset
    steps = np.arange(first + 1, last + 1)  # 1-based steps of the AUROC samples
    outcome.scores.append(scores[first:last])
    if trace.collapse_onset is None:
        outcome.labels.append(np.zeros(len(steps), dtype=bool))
    else:
        outcome.labels.append(trace.collapse_onset - steps <= horizon)
        outcome.collapses += 1
        lead = lead_time(alarms, trace.collapse_onset, horizon)
        if lead is not None:
            outcome.leads.append(lead * trace.k)
    if _calm(trace):
        outcome.calm_alarms += int(alarms.sum())
        outcome.calm_steps += len(alarms)
    elif trace.collapse_onset is None:
        outcome.survivors += 1
        outcome.alarmed_survivors += bool(alarms[first:].any())


def _calm(trace: Trace) -> bool:
    """An unperturbed run that did not collapse: calibration and false-alarm material (a
    reference run that collapses on its own counts as a collapse instead)."""
    return trace.reference and trace.collapse_onset is None


def lead_time(alarms: np.ndarray, onset: int, horizon: int) -> int | None:
    """Steps from the first alarm in steps ``onset - horizon .. onset`` (1-based; ``alarms[t -
    1]`` is step ``t``) to ``onset``; ``None`` if none of them alarms."""
    lo = max(1, onset - horizon)
    hits = np.flatnonzero(alarms[lo - 1 : onset])
    return None if len(hits) == 0 else onset - (lo + int(hits[0]))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (NaN unless both classes occur).

    Computed from ranks, as the Mann-Whitney U statistic over ``n_pos * n_neg``: the same
    number as scikit-learn's ``roc_auc_score`` (ties count one half; infinite scores rank
    above every finite one; NaN scores count as 0) at a fraction of its cost, which the
    bootstrap needs.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0,
                                   posinf=np.inf, neginf=-np.inf))  # fmt: skip
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _statistics(o: list[_SeedOutcome], n_boot: int, confidence: float) -> dict[str, float]:
    collapses = np.array([x.collapses for x in o])
    detected = np.array([len(x.leads) for x in o])

    def detection(draws: np.ndarray) -> np.ndarray:
        total = collapses[draws].sum(axis=1)
        return np.where(total > 0, detected[draws].sum(axis=1) / np.maximum(total, 1), np.nan)

    def median_lead(draws: np.ndarray) -> np.ndarray:
        return np.array([_median([x for i in row for x in o[i].leads]) for row in draws])

    def area(draws: np.ndarray) -> np.ndarray:
        return np.array(
            [auroc(np.concatenate([s for i in row for s in o[i].scores]),
                   np.concatenate([s for i in row for s in o[i].labels])) for row in draws]
        )  # fmt: skip

    everyone = np.arange(len(o))[None, :]
    stats: dict[str, float] = {"collapses": int(collapses.sum()), "detected": int(detected.sum())}
    for key, statistic in (("detection_rate", detection), ("lead_median", median_lead),
                           ("auroc", area)):  # fmt: skip
        stats[key] = float(statistic(everyone)[0])
        stats[f"{key}_lo"], stats[f"{key}_hi"] = bootstrap_ci(statistic, len(o), n_boot, confidence)
    stats["false_alarm_rate"] = sum(x.calm_alarms for x in o) / max(sum(x.calm_steps for x in o), 1)
    survivors = sum(x.survivors for x in o)
    stats["survivors"] = survivors
    alarmed = sum(x.alarmed_survivors for x in o)
    stats["alarmed_survivors"] = alarmed / survivors if survivors else math.nan
    return stats


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan
