"""Early-warning evaluation: do detectors alarm before a run collapses, and how early?

**Runs.** For each seed: one unperturbed *reference* run and one run per :class:`Ramp`, a
perturbation whose magnitude grows step by step from ``start`` to ``end`` (geometrically for
log-scale interventions) over ``steps`` steps from step ``onset``, then holds at ``end``: a
knob intervention is re-issued every step, an event fires every step. Gradual perturbations,
because no detector can warn of a collapse that its inputs and the performance show at the
same step; mild ramps (runs survive them) and severe ones (they do not) give both outcomes.
Runs go through ``env.step`` with scripted continuous actions and record what ``info`` holds.

**Collapse.** A run collapses when the env's collapse rule fires (``terminated``). Its
*collapse onset* ``T`` is the step the collapse became observable: the first step of the final
streak of steps below the rule's threshold (``(1 - drop) * best p``), or the step training went
non-finite. Steps are 1-based: step ``t`` is the state after the run's ``t``-th ``env.step``.

**Detectors** (:data:`DETECTORS`) score every step. Each is calibrated to the same false-alarm
rate ``alpha`` on reference runs, cross-fitted by seed: the threshold applied to seed ``s``'s
runs is the ``1 - alpha`` quantile of the scores of the *other* seeds' reference runs
(:func:`~trainenv.audit.warning.calibrate_threshold`), so the false-alarm rate reported is
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

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainenv.audit.metrics import bootstrap_ci
from trainenv.audit.warning import (
    Cusum,
    Detector,
    GradNormZScore,
    LossSpike,
    MetaStateDeviation,
    SelfDeviation,
    calibrate_threshold,
)
from trainenv.core import interventions as registry
from trainenv.core.actions import ContinuousMagnitudes
from trainenv.core.collapse import CollapseRule, CollapseState
from trainenv.env import TrainEnv

REFERENCE = "reference"  # the scenario of an unperturbed run
LOSS_CHANNELS = ("train_loss", "loss")  # the first a trainer has is "the loss"

DETECTORS: dict[str, tuple[Callable[[], Detector], str]] = {
    "meta-state deviation": (MetaStateDeviation, "deviation"),
    "self-deviation": (SelfDeviation, "latents"),
    "loss spike": (LossSpike, "loss"),
    "grad-norm z-score": (GradNormZScore, "grad_norm"),
    "CUSUM (loss)": (Cusum, "loss"),
}
"""Detector name -> (factory with default settings, the :class:`Trace` input it reads)."""
PRIMARY = "meta-state deviation"  # the detector claim 3 is about


@dataclass(frozen=True)
class Ramp:
    """A gradual perturbation: ``intervention`` from ``start`` to ``end`` over ``steps`` steps
    from step ``onset`` (the first perturbed step is ``onset + 1``), then held at ``end``."""

    intervention: str
    start: float
    end: float
    steps: int
    onset: int

    def __post_init__(self) -> None:
        intervention = registry.get(self.intervention)
        intervention.validate_magnitude(self.start)
        intervention.validate_magnitude(self.end)
        if self.steps < 1 or self.onset < 0:
            raise ValueError(
                f"ramp needs steps >= 1 and onset >= 0, got {self.steps}, {self.onset}"
            )

    @property
    def label(self) -> str:
        return f"{self.intervention} {self.start:g}->{self.end:g}"

    def magnitude(self, step: int) -> float | None:
        """Magnitude applied on step ``step`` (1-based), ``None`` before the onset."""
        if step <= self.onset:
            return None
        intervention = registry.get(self.intervention)
        lo, hi = intervention.position(self.start), intervention.position(self.end)
        fraction = min(1.0, (step - self.onset - 1) / max(1, self.steps - 1))
        return intervention.magnitude(lo + (hi - lo) * fraction)


@dataclass
class Trace:
    """One run, step by step (index ``t - 1`` holds step ``t``).

    Attributes:
        paradigm: Label of the recipe family (``"supervised"``, ``"RL"``, ``"LM"``).
        seed: The run's seed.
        scenario: :data:`REFERENCE` or the ramp's label.
        k: Updates per step.
        p: Normalised performance, shape ``(T,)``.
        inputs: Detector inputs, each ``(T,)`` or ``(T, d)``: ``deviation``
            (``info["deviation"]``), ``latents`` (the meta-state), ``loss``, ``grad_norm``.
        collapse_onset: Collapse onset step ``T`` (``None``: the run did not collapse).
        ramp_onset: First perturbed step (``None`` for a reference run).
    """

    paradigm: str
    seed: int
    scenario: str
    k: int
    p: np.ndarray
    inputs: dict[str, np.ndarray]
    collapse_onset: int | None = None
    ramp_onset: int | None = None

    @property
    def reference(self) -> bool:
        return self.ramp_onset is None


@dataclass(frozen=True)
class Task:
    """One run to simulate: a registered env (with kwargs), a seed, an optional ramp."""

    paradigm: str
    env: str
    env_kwargs: Mapping[str, Any]
    seed: int
    ramp: Ramp | None
    interventions: tuple[str, ...]  # every ramp's intervention: one env serves all the tasks
    loss_channel: str | None = None  # default: the first of LOSS_CHANNELS the trainer has

    @property
    def scenario(self) -> str:
        """:data:`REFERENCE` or the ramp's label (the :class:`Trace` keeps it)."""
        return self.ramp.label if self.ramp else REFERENCE


# -- simulation -------------------------------------------------------------------------------
_ENVS: dict[str, TrainEnv] = {}  # per process: building a trainer is slow, reset is complete


def _env(task: Task) -> TrainEnv:
    import gymnasium as gym

    import trainenv  # noqa: F401  (registers the environments)

    key = json.dumps([task.env, task.env_kwargs, task.interventions], sort_keys=True)
    if key not in _ENVS:
        env = gym.make(task.env, **task.env_kwargs, action_mode="continuous",
                       interventions=list(task.interventions))  # fmt: skip
        _ENVS[key] = env.unwrapped  # type: ignore[assignment]
    return _ENVS[key]


def simulate(task: Task) -> Trace:
    """Run one task through ``env.step`` and record its trace."""
    env = _env(task)
    spec = env.action_spec
    assert isinstance(spec, ContinuousMagnitudes)  # _env asks for continuous actions
    if env.encoder is None or env.encoder.band_ is None:
        raise ValueError(f"{task.env}: the early-warning evaluation needs an encoder with a band")
    channels = [c.name for c in env.trainer.channels]
    loss = task.loss_channel or next((c for c in LOSS_CHANNELS if c in channels), None)
    if loss not in channels or "grad_norm" not in channels:
        raise ValueError(f"{task.env}: needs a loss channel and grad_norm, has {channels}")
    _, info = env.reset(seed=task.seed)
    p0, rows, reason = info["p"], [], None
    d = env.encoder.n_components
    for step in range(1, env.max_steps + 1):
        ramp = task.ramp
        magnitude = ramp.magnitude(step) if ramp else None
        action = spec.encode(
            {} if ramp is None or magnitude is None else {ramp.intervention: magnitude}
        )
        obs, _, terminated, truncated, info = env.step(action)
        telemetry = info["telemetry"]
        rows.append((info["p"], info["deviation"], telemetry[loss], telemetry["grad_norm"],
                     *obs[:d]))  # fmt: skip
        if terminated:
            reason = info["collapse"]
        if terminated or truncated:
            break
    values = np.asarray(rows, dtype=np.float64)
    return Trace(
        paradigm=task.paradigm,
        seed=task.seed,
        scenario=task.scenario,
        k=env.k,
        p=values[:, 0],
        inputs={
            "deviation": values[:, 1],
            "loss": values[:, 2],
            "grad_norm": values[:, 3],
            "latents": values[:, 4:],
        },
        collapse_onset=collapse_onset(values[:, 0], p0, env.collapse_rule, reason),
        ramp_onset=task.ramp.onset + 1 if task.ramp else None,
    )


def collapse_onset(p: np.ndarray, p0: float, rule: CollapseRule, reason: str | None) -> int | None:
    """The step (1-based) a collapse became observable, given the run's ``p`` per step, its
    ``p0`` at reset and the collapse reason of its last step (``None``: no collapse).

    For a performance collapse, the first step of the streak below the threshold that made
    the rule fire; for a non-finite one, the first step of the streak below the threshold
    still running when training went non-finite, else that last step.
    """
    if reason is None:
        return None
    state, start = CollapseState(best=p0), len(p)
    for t, value in enumerate(p, start=1):
        state, fired = rule.update(state, float(value), diverged=False)
        if state.below == 1:
            start = t
        if fired is not None:
            return start
    if reason == "non-finite":
        return start if state.below > 0 else len(p)
    raise ValueError("the collapse rule does not fire on these p values: wrong rule or p0?")


def tasks_for(
    paradigm: str,
    env: str,
    ramps: Sequence[Ramp],
    seeds: Iterable[int],
    env_kwargs: Mapping[str, Any] | None = None,
    loss_channel: str | None = None,
) -> list[Task]:
    """Per seed, a reference run and one run per ramp."""
    names = tuple(sorted({r.intervention for r in ramps}))
    return [
        Task(paradigm, env, dict(env_kwargs or {}), seed, ramp, names, loss_channel)
        for seed in seeds
        for ramp in (None, *ramps)
    ]


# -- evaluation -------------------------------------------------------------------------------
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


def evaluate(
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


# -- storage ----------------------------------------------------------------------------------
def traces_frame(traces: Sequence[Trace]) -> pd.DataFrame:
    """Traces as one table, a row per step (latents as lists), for Parquet."""
    frames = []
    for trace in traces:
        n = len(trace.p)
        frames.append(
            pd.DataFrame({
                "paradigm": trace.paradigm, "seed": trace.seed, "scenario": trace.scenario,
                "k": trace.k, "step": np.arange(1, n + 1), "p": trace.p,
                "collapse_onset": trace.collapse_onset or 0, "ramp_onset": trace.ramp_onset or 0,
                **{key: value.tolist() if value.ndim > 1 else value
                   for key, value in trace.inputs.items()},
            })
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def read_traces(frame: pd.DataFrame) -> list[Trace]:
    """Traces back from :func:`traces_frame`'s table (e.g. ``claim3_traces.parquet``), to
    re-evaluate them with another horizon or false-alarm rate."""
    traces = []
    for (paradigm, seed, scenario), rows in frame.groupby(["paradigm", "seed", "scenario"]):
        rows = rows.sort_values("step")
        first = rows.iloc[0]
        traces.append(
            Trace(
                paradigm=str(paradigm),
                seed=int(seed),
                scenario=str(scenario),
                k=int(first["k"]),
                p=rows["p"].to_numpy(float),
                inputs={
                    "deviation": rows["deviation"].to_numpy(float),
                    "loss": rows["loss"].to_numpy(float),
                    "grad_norm": rows["grad_norm"].to_numpy(float),
                    "latents": np.stack(rows["latents"].to_numpy()).astype(float),
                },
                collapse_onset=int(first["collapse_onset"]) or None,
                ramp_onset=int(first["ramp_onset"]) or None,
            )
        )
    return traces
