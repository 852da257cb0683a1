"""Early-warning evaluation: do detectors alarm before a run collapses, and how early?

The inputs are :class:`~trainenv.warning.simulation.Trace` s: reference runs and ramps per
seed, with each run's collapse onset ``T`` (and the meta-states' inputs,
:func:`~trainenv.warning.metastates.with_meta_states`).

**Detectors** score every step: the streaming ones of :data:`DETECTORS` and the learned ones
of :data:`LEARNED`. Each is calibrated to the same false-alarm rate ``alpha`` on reference
runs, cross-fitted by seed: the threshold applied to seed ``s``'s runs is the ``1 - alpha``
quantile of the scores of the *other* seeds' reference runs
(:func:`~trainenv.warning.detectors.threshold_at`), so the false-alarm rate reported is out of
sample. A learned detector is cross-fitted the same way: the model scoring seed ``s`` is
trained on the other seeds' runs only, and the reference scores its threshold comes from are
each out of fold too (seed ``s'``'s from a model trained on neither ``s`` nor ``s'``).

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
  positive iff ``0 <= T - t <= H`` (:func:`auroc`, equal to scikit-learn's ``roc_auc_score``;
  :meth:`~trainenv.warning.simulation.Trace.labelled_steps`);
- the AUROC difference from the primary detector's, paired (the same seed resamples).

Confidence intervals: percentile bootstrap over seeds, the independent unit
(:func:`~trainenv.audit.metrics.bootstrap_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

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
    threshold_at,
)
from trainenv.warning.learned import LogisticBaseline, Scorer
from trainenv.warning.simulation import Trace

__all__ = [
    "BASELINE",
    "CLAIM3",
    "DETECTORS",
    "FULL_METASTATE",
    "LEARNED",
    "PRIMARY",
    "auroc",
    "evaluate_detectors",
    "lead_time",
]

DETECTORS: dict[str, tuple[Callable[[], Detector], str]] = {
    "meta-state deviation": (MetaStateDeviation, "deviation"),
    "self-deviation": (SelfDeviation, "latents"),
    "loss spike": (LossSpike, "loss"),
    "grad-norm z-score": (GradNormZScore, "grad_norm"),
    "CUSUM (loss)": (Cusum, "loss"),
}
"""Detector name -> (factory with default settings, the :class:`Trace` input it reads); the
monitor's table too (:data:`trainenv.monitor.monitor.DETECTORS`)."""

PRIMARY = "leak-free meta-state deviation"  # the detector claim 3 is about
FULL_METASTATE = "full meta-state deviation"  # the same on every channel: it leaks
BASELINE = "logistic regression"  # the learned baseline, on the leak-free meta-state's inputs
CLAIM3: dict[str, tuple[Callable[[], Detector], str]] = {
    PRIMARY: DETECTORS["meta-state deviation"],
    FULL_METASTATE: (MetaStateDeviation, "deviation_full"),
    "leak-free self-deviation": DETECTORS["self-deviation"],
    **{name: DETECTORS[name] for name in ("loss spike", "grad-norm z-score", "CUSUM (loss)")},
}
"""Claim 3's streaming detectors, on traces with meta-states
(:func:`~trainenv.warning.metastates.with_meta_states`: ``deviation`` and ``latents`` are the
leak-free meta-state's)."""
LEARNED: dict[str, LogisticBaseline] = {BASELINE: LogisticBaseline("features_leak_free")}
"""Claim 3's learned detectors: name -> the model, trained per cross-fitting fold."""


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
    learned: Mapping[str, LogisticBaseline] | None = None,
    primary: str = "meta-state deviation",
) -> pd.DataFrame:
    """Per detector: detection rate, median lead time (updates), false-alarm rate, alarmed
    survivors and AUROC, with bootstrap CIs over seeds (see the module docstring).

    Returns one row per detector (``detectors``, then ``learned``) with columns ``detector``,
    ``input``, ``threshold`` (median over the cross-fitting folds), ``collapses``,
    ``detected``, ``detection_rate`` (+ ``_lo``/``_hi``), ``lead_median`` (+ ``_lo``/``_hi``),
    ``false_alarm_rate``, ``survivors``, ``alarmed_survivors``, ``auroc`` (+ ``_lo``/``_hi``)
    and ``auroc_vs_primary`` (+ ``_lo``/``_hi``: this AUROC minus that of the detector named
    ``primary``; NaN without it). Claim 3 passes :data:`CLAIM3`, :data:`LEARNED` and
    :data:`PRIMARY`.
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0 steps, got {horizon}")
    seeds = sorted({t.seed for t in traces})
    reference_seeds = {t.seed for t in traces if t.reference}
    if len(reference_seeds) < 2 or reference_seeds != set(seeds):
        raise ValueError("traces: every seed needs a reference run, and >= 2 seeds (cross-fitting)")
    evaluated: dict[str, tuple[str, list[_SeedOutcome], list[float]]] = {}
    for name, (factory, key) in detectors.items():
        streaming = _streaming(factory, key)
        evaluated[name] = (key, *_outcomes(traces, seeds, streaming, horizon, false_alarm_rate))
    for name, model in (learned or {}).items():
        fit = partial(model.fit, horizon=horizon)
        fold = _outcomes(traces, seeds, fit, horizon, false_alarm_rate, learns=True)
        evaluated[name] = (model.input, *fold)
    reference = evaluated[primary][1] if primary in evaluated else None
    rows = []
    for name, (key, outcomes, thresholds) in evaluated.items():
        rows.append({"detector": name, "input": key, "threshold": float(np.median(thresholds)),
                     **_statistics(outcomes, n_boot, confidence),
                     **_auroc_difference(outcomes, reference, n_boot, confidence)})  # fmt: skip
    return pd.DataFrame(rows)


def _streaming(factory: Callable[[], Detector], key: str) -> Callable[[Sequence[Trace]], Scorer]:
    """A streaming detector as a "fit": nothing to learn, the same scorer for every fold."""

    def score(trace: Trace) -> np.ndarray:
        return factory().scores(trace.inputs[key])

    return lambda train: score


def _outcomes(
    traces: Sequence[Trace],
    seeds: list[int],
    fit: Callable[[Sequence[Trace]], Scorer],
    horizon: int,
    alpha: float,
    learns: bool = False,
) -> tuple[list[_SeedOutcome], list[float]]:
    """Per held-out seed: the outcomes of the scorer fitted on the other seeds' runs, at the
    threshold from the other seeds' calm reference runs. ``learns``: the scorer depends on
    its training runs, so each calm run is scored by one fitted without its seed either."""
    outcomes, thresholds = [], []
    for seed in seeds:
        train = [t for t in traces if t.seed != seed]
        score = fit(train)
        calibration = []
        for other in sorted({t.seed for t in train}):
            inner = fit([t for t in train if t.seed != other]) if learns else score
            calibration += [inner(t) for t in train if t.seed == other and _calm(t)]
        threshold = threshold_at(calibration, alpha)
        thresholds.append(threshold)
        outcome = _SeedOutcome()
        for trace in (t for t in traces if t.seed == seed):
            _record(outcome, trace, score(trace), threshold, horizon)
        outcomes.append(outcome)
    return outcomes, thresholds


def _record(
    outcome: _SeedOutcome, trace: Trace, scores: np.ndarray, threshold: float, horizon: int
) -> None:
    """Add one run's alarms, lead time and AUROC samples to its seed's outcome."""
    alarms = scores > threshold
    first, last, labels = trace.labelled_steps(horizon)
    outcome.scores.append(scores[first:last])
    outcome.labels.append(labels)
    if trace.collapse_onset is not None:
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
        return np.array([_pooled_auroc(o, row) for row in draws])

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


def _auroc_difference(
    o: list[_SeedOutcome], primary: list[_SeedOutcome] | None, n_boot: int, confidence: float
) -> dict[str, float]:
    """This detector's AUROC minus the primary's, with a paired bootstrap CI over seeds (both
    AUROCs from the same resample)."""
    if primary is None:
        return dict.fromkeys(("auroc_vs_primary", "auroc_vs_primary_lo", "auroc_vs_primary_hi"),
                             math.nan)  # fmt: skip
    reference = primary

    def difference(draws: np.ndarray) -> np.ndarray:
        return np.array([_pooled_auroc(o, row) - _pooled_auroc(reference, row) for row in draws])

    value = float(difference(np.arange(len(o))[None, :])[0])
    lo, hi = bootstrap_ci(difference, len(o), n_boot, confidence)
    return {"auroc_vs_primary": value, "auroc_vs_primary_lo": lo, "auroc_vs_primary_hi": hi}


def _pooled_auroc(outcomes: list[_SeedOutcome], seeds: np.ndarray) -> float:
    """The AUROC of the samples of the seeds (indices into ``outcomes``, repeats allowed)."""
    scores = np.concatenate([s for i in seeds for s in outcomes[i].scores])
    return auroc(scores, np.concatenate([s for i in seeds for s in outcomes[i].labels]))


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan
