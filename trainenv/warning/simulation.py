"""Early-warning runs: reference runs and gradual perturbations (ramps), recorded step by step.

**Runs.** For each seed: one unperturbed *reference* run and one run per :class:`Ramp`, a
perturbation whose magnitude grows step by step from ``start`` to ``end`` (geometrically for
log-scale interventions) over ``steps`` steps from step ``onset``, then holds at ``end``: a
knob intervention is re-issued every step, an event fires every step. Gradual perturbations,
because no detector can warn of a collapse that its inputs and the performance show at the
same step; mild ramps (runs survive them) and severe ones (they do not) give both outcomes.
Runs go through ``env.intervene`` with the ramp's ``{name: magnitude}`` and record, per step,
``p``, the loss and gradient norm, the update count and the window features of every telemetry
channel (:class:`Trace`, recorded by :mod:`~trainenv.warning.recording`; on populations where
the env has one, :mod:`~trainenv.warning.populations`); meta-states are fitted on those
features afterwards (:mod:`~trainenv.warning.metastates`), from *calibration* runs:
unperturbed runs with the seeds :func:`~trainenv.calibration.calibrate` uses, kept apart from
the evaluated ones.
:func:`simulate_runs` runs many through a backend into a results store, so an interrupted
evaluation resumes.

**Collapse.** A run collapses when the env's collapse rule fires (``terminated``). Its
*collapse onset* ``T`` is the step the collapse became observable: the first step of the final
streak of steps below the rule's threshold (``(1 - drop) * best p``), or the step training went
non-finite. Steps are 1-based: step ``t`` is the state after the run's ``t``-th step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainenv.audit.backends import make_backend
from trainenv.audit.runner import run_id
from trainenv.audit.store import ResultStore, RunRecord
from trainenv.audit.tasks import backend_for, run_tasks
from trainenv.calibration import REFERENCE_SEED_BASE
from trainenv.core import interventions as registry

__all__ = [
    "CALIBRATION",
    "RECORDED",
    "REFERENCE",
    "Ramp",
    "Task",
    "Trace",
    "read_traces",
    "simulate_runs",
    "task_id",
    "tasks_for",
    "traces_frame",
]

REFERENCE = "reference"  # the scenario of an unperturbed run
CALIBRATION = "calibration"  # the scenario of an unperturbed run that meta-states are fitted on
RECORDED = ("loss", "grad_norm", "updates", "features")  # the inputs simulate_run records


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
        inputs: Detector inputs, each ``(T,)`` or ``(T, d)``. Recorded (:data:`RECORDED`):
            ``loss``, ``grad_norm``, ``updates`` (the run's update count) and ``features``
            (the window features of every channel, ``(T, 3 C)``, as
            :func:`~trainenv.core.metastate.window_features` lays them out); added by
            :func:`~trainenv.warning.metastates.with_meta_states`: deviations, latents.
        collapse_onset: Collapse onset step ``T`` (``None``: the run did not collapse).
        ramp_onset: First perturbed step (``None`` for a reference run).
        channels: The telemetry channels ``features`` cover, in order.
        roles: Each channel's :data:`~trainenv.core.telemetry.ChannelRole`.
    """

    paradigm: str
    seed: int
    scenario: str
    k: int
    p: np.ndarray
    inputs: dict[str, np.ndarray]
    collapse_onset: int | None = None
    ramp_onset: int | None = None
    channels: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    @property
    def reference(self) -> bool:
        """An unperturbed run (calibration runs too)."""
        return self.ramp_onset is None

    def labelled_steps(self, horizon: int) -> tuple[int, int, np.ndarray]:
        """The steps scored for "collapse onset within ``horizon`` steps": ``(first, last,
        labels)``, samples ``first:last`` (0-based indices) and their labels, ``(last -
        first,)`` booleans. Every step of a reference run; a perturbed run's from its ramp's
        onset (before it, it repeats the reference run of its seed), up to ``T`` if it
        collapsed; step ``t`` is positive iff ``0 <= T - t <= horizon``."""
        first = 0 if self.ramp_onset is None else self.ramp_onset - 1
        last = len(self.p) if self.collapse_onset is None else self.collapse_onset
        steps = np.arange(first + 1, last + 1)  # 1-based
        if self.collapse_onset is None:
            return first, last, np.zeros(len(steps), dtype=bool)
        return first, last, self.collapse_onset - steps <= horizon


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
    calibration: bool = False  # an unperturbed run to fit meta-states on, not to evaluate

    @property
    def scenario(self) -> str:
        """:data:`CALIBRATION`, :data:`REFERENCE` or the ramp's label (the :class:`Trace`
        keeps it)."""
        if self.calibration:
            return CALIBRATION
        return self.ramp.label if self.ramp else REFERENCE


def tasks_for(
    paradigm: str,
    env: str,
    ramps: Sequence[Ramp],
    seeds: Iterable[int],
    env_kwargs: Mapping[str, Any] | None = None,
    loss_channel: str | None = None,
    calibration: int = 0,
) -> list[Task]:
    """Per seed, a reference run and one run per ramp; first, ``calibration`` unperturbed
    calibration runs (seeds ``REFERENCE_SEED_BASE + i``, as ``trainenv calibrate``'s)."""
    names = tuple(sorted({r.intervention for r in ramps}))
    kwargs = dict(env_kwargs or {})
    calibrating = [
        Task(paradigm, env, kwargs, REFERENCE_SEED_BASE + i, None, names, loss_channel, True)
        for i in range(calibration)
    ]
    return calibrating + [
        Task(paradigm, env, kwargs, seed, ramp, names, loss_channel)
        for seed in seeds
        for ramp in (None, *ramps)
    ]


# -- storage ----------------------------------------------------------------------------------
# traces_frame's columns that are not inputs (and the results store's run id)
_META = ("paradigm", "seed", "scenario", "k", "step", "p", "collapse_onset", "ramp_onset",
         "channels", "roles", "run_id")  # fmt: skip


def traces_frame(traces: Sequence[Trace]) -> pd.DataFrame:
    """Traces as one table, a row per step (2-D inputs as lists; channels and roles as
    comma-separated text), for Parquet."""
    frames = []
    for trace in traces:
        n = len(trace.p)
        frames.append(
            pd.DataFrame({
                "paradigm": trace.paradigm, "seed": trace.seed, "scenario": trace.scenario,
                "k": trace.k, "step": np.arange(1, n + 1), "p": trace.p,
                "collapse_onset": trace.collapse_onset or 0, "ramp_onset": trace.ramp_onset or 0,
                "channels": ",".join(trace.channels), "roles": ",".join(trace.roles),
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
                    key: _column(rows[key])
                    for key in rows.columns
                    if key not in _META and not rows[key].isna().all()
                },  # fmt: skip
                collapse_onset=int(first["collapse_onset"]) or None,
                ramp_onset=int(first["ramp_onset"]) or None,
                channels=tuple(filter(None, str(first["channels"]).split(","))),
                roles=tuple(filter(None, str(first["roles"]).split(","))),
            )
        )
    return traces


def _column(values: pd.Series) -> np.ndarray:
    """An input column back as ``(T,)`` or, for one of lists, ``(T, d)`` floats."""
    if np.ndim(values.iloc[0]) > 0:
        return np.stack(values.to_numpy()).astype(float)
    return values.to_numpy(float)


def task_id(task: Task) -> str:
    """A stable id of everything that determines a run (so a changed task reruns)."""
    return run_id({
        "paradigm": task.paradigm, "env": task.env, "env_kwargs": dict(task.env_kwargs),
        "seed": task.seed, "ramp": repr(task.ramp), "interventions": list(task.interventions),
        "loss_channel": task.loss_channel, "calibration": task.calibration,
        "recorded": list(RECORDED),
    })  # fmt: skip


def simulate_runs(
    tasks: Sequence[Task],
    store: ResultStore,
    workers: int = 1,
    progress: bool | None = None,
    backend: str = "auto",
) -> list[Trace]:
    """Simulate ``tasks`` on ``workers`` local workers, each run written to ``store`` as it
    finishes (one ``steps/`` table per run, id :func:`task_id`; runs already there are read
    back, not rerun). Returns every task's trace, sorted by paradigm, seed and scenario.

    ``backend`` (one of :data:`~trainenv.warning.populations.SIMULATION_BACKENDS`, the audit's
    rule): ``auto`` runs the tasks of an env with a population form (Digits-MLP, CartPole-PPO)
    as members of populations (:mod:`~trainenv.warning.populations`; a population's runs are
    written when it finishes, so a kill loses at most the populations in flight) and the
    others one per run; ``population`` insists; ``process`` and ``serial`` run each task
    alone with the single-run trainer. A task's run id does not depend on the backend (as in
    audits): a population trace equals the single-run trainer's statistically, not bit for
    bit (for CartPole PPO), so compare traces of one backend.
    """
    from trainenv.warning.populations import simulate_unit, work_units

    ids = {(t.paradigm, t.seed, t.scenario): task_id(t) for t in tasks}

    def record(traces: list[Trace]) -> list[RunRecord]:
        records = []
        for trace in traces:
            rid = ids[trace.paradigm, trace.seed, trace.scenario]
            steps = traces_frame([trace]).assign(run_id=rid).to_dict("records")
            records.append(RunRecord({"run_id": rid, "paradigm": trace.paradigm}, steps))
        return records

    work_units(tasks, backend, workers)  # a bad backend: ValueError before anything runs
    pool = make_backend(backend if backend in ("process", "serial") else backend_for(workers),
                        workers)  # fmt: skip
    with store:  # locks the folder; on leaving, writes what is buffered and unlocks
        finished = store.finished()
        todo = [t for t in tasks if ids[t.paradigm, t.seed, t.scenario] not in finished]
        run_tasks(simulate_unit, work_units(todo, backend, workers), store, record,
                  backend=pool, total=len(tasks), done=len(tasks) - len(todo),
                  desc="early warning", progress=progress)  # fmt: skip
    return read_traces(store.steps(ids.values()))
