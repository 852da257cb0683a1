"""Paired runs: each perturbed run against its unperturbed fork from the same state.

The unit of work is a *group*: one recipe, seed and onset. A group resets the env with the
seed and steps it ``onset`` times with no-ops (stabilizers held on), then forks it: the
unperturbed branch continues with no-ops for the horizon (computed once and shared by every
perturbation of the group), and each perturbed branch is a fork of the same onset state whose
first steps carry the perturbation. Everything goes through ``env.intervene`` with scripted
``{name: magnitude}`` mappings, as any user of the env could do. Trainers draw perturbation
noise from generators of their own, so both branches see the same training randomness (common random
numbers) and their difference is the perturbation's effect.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from trainenv.audit.backends import make_backend
from trainenv.audit.metrics import RunMetrics, run_metrics
from trainenv.audit.plan import AuditPlan, Recipe
from trainenv.audit.store import BATCH_RUNS, FLUSH_SECONDS, ResultStore, RunRecord
from trainenv.audit.tasks import run_tasks
from trainenv.core import interventions as registry
from trainenv.env import TrainEnv

BASELINE = "none"  # the ``intervention`` of an unperturbed branch
DEVIATION_KEYS = ("deviation", "self_deviation")


@dataclass(frozen=True)
class Perturbation:
    """One perturbed run of a group: the intervention, its magnitude and window."""

    run_id: str
    name: str
    magnitude: float
    window: int  # steps the perturbation acts for
    issues: int  # consecutive steps the action is issued on

    def issued_over(self, hold: Mapping[str, float]) -> int:
        """Steps the action is issued on, given the knobs held on: a perturbation of a held
        knob is issued over its whole window (re-applying the hold would end it at once)."""
        return self.window if self.name in hold else self.issues


@dataclass(frozen=True)
class Group:
    """A unit of work: the unperturbed branch of (recipe, seed, onset) and perturbed runs."""

    recipe: Recipe
    seed: int
    onset: int
    horizon: int
    tolerance: float
    action_names: tuple[str, ...]  # the env's action components (same for the whole plan)
    baseline_id: str
    write_baseline: bool
    perturbations: tuple[Perturbation, ...]

    @property
    def n_runs(self) -> int:
        return int(self.write_baseline) + len(self.perturbations)


def run_id(keys: dict[str, Any]) -> str:
    """A deterministic id for a run: a hash of its plan keys."""
    blob = json.dumps(keys, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_groups(plan: AuditPlan, finished: AbstractSet[str] = frozenset()) -> list[Group]:
    """The groups with work left, given the ids of finished runs."""
    action_names = tuple(g.name for g in plan.interventions)
    groups = []
    for recipe, seed, onset in itertools.product(plan.recipes, plan.seeds, plan.onsets):
        common = {"recipe": recipe.key(), "seed": seed, "onset": onset, "horizon": plan.horizon}
        baseline_id = run_id({**common, "intervention": BASELINE})
        perturbations = []
        for grid in plan.interventions:
            for magnitude in grid.magnitudes:
                keys = {**common, "tolerance": plan.tolerance, "intervention": grid.name,
                        "magnitude": magnitude, "duration": grid.window}  # fmt: skip
                if (rid := run_id(keys)) not in finished:
                    perturbations.append(
                        Perturbation(rid, grid.name, magnitude, grid.window, grid.issues)
                    )
        if perturbations or baseline_id not in finished:
            groups.append(
                Group(
                    recipe=recipe,
                    seed=seed,
                    onset=onset,
                    horizon=plan.horizon,
                    tolerance=plan.tolerance,
                    action_names=action_names,
                    baseline_id=baseline_id,
                    write_baseline=baseline_id not in finished,
                    perturbations=tuple(perturbations),
                )
            )
    return groups


# -- one group ------------------------------------------------------------------------------
_ENVS: dict[str, TrainEnv] = {}  # per process: building a trainer is slow, reset is complete


def _env(group: Group) -> TrainEnv:
    names = [*group.action_names, *(s.name for s in group.recipe.stabilizers)]
    key = json.dumps([group.recipe.key(), names])
    if key not in _ENVS:
        _ENVS[key] = group.recipe.make_env(names)
    return _ENVS[key]


def run_group(group: Group) -> list[RunRecord]:
    """Run a group: the shared prefix, the unperturbed branch, every perturbed branch."""
    started = time.perf_counter()
    env = _env(group)
    hold = {s.name: s.magnitude for s in group.recipe.stabilizers}

    obs, info = env.reset(seed=group.seed)
    prefix = [step_row(group.baseline_id, 0, obs, info)]
    for t in range(1, group.onset + 1):
        obs, _, terminated, _, info = env.intervene(hold)
        prefix.append(step_row(group.baseline_id, t, obs, info))
        if terminated:
            return _prefix_collapsed(group, prefix, info["collapse"], started)

    base = _branch(env, [hold] * group.horizon, group.onset, group.baseline_id)
    records = []
    if group.write_baseline:
        records.append(RunRecord(_row(group, None, base, started), prefix + base.steps))
    for pert in group.perturbations:
        branch_started = time.perf_counter()
        hit, issued = {**hold, pert.name: pert.magnitude}, pert.issued_over(hold)
        schedule = [hit] * issued + [hold] * (group.horizon - issued)
        branch = _branch(env, schedule, group.onset, pert.run_id)
        row = _row(group, pert, branch, branch_started, base)
        row["applied_magnitude"] = branch.applied[pert.name]  # as the env reports it
        records.append(RunRecord(row, branch.steps))
    return records


@dataclass
class _Branch:
    steps: list[dict[str, Any]]
    p: np.ndarray  # shape (horizon,); 0 after a collapse
    collapse: str | None
    applied: dict[str, float]  # what the env applied on the branch's first step


def _branch(origin: TrainEnv, schedule: list[dict[str, float]], onset: int, rid: str) -> _Branch:
    """Fork ``origin`` and apply ``schedule`` (one ``{name: magnitude}`` per step) to the
    fork, stopping at a collapse."""
    env = origin.fork()
    steps, collapse, applied = [], None, {}
    for h, interventions in enumerate(schedule, start=1):
        obs, _, terminated, _, info = env.intervene(interventions)
        steps.append(step_row(rid, onset + h, obs, info))
        if h == 1:
            applied = dict(info["applied"])
        if terminated:
            collapse = info["collapse"]
            break
    p = np.zeros(len(schedule))
    p[: len(steps)] = [s["p"] for s in steps]
    return _Branch(steps, p, collapse, applied)


def step_row(rid: str, step: int, obs: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
    """The ``steps/`` row of one env step of run ``rid``: ``p``, performance, collapse, the
    interventions applied, knobs, telemetry, the observation and any deviation scores."""
    return {
        "run_id": rid,
        "step": step,
        "p": float(info["p"]),
        "performance": float(info["performance"]),
        "collapse": info["collapse"],
        "applied": ", ".join(f"{n}={m:.6g}" for n, m in info["applied"]),
        "updates": int(info["updates"]),
        **{f"knob.{k}": float(v) for k, v in info["knobs"].items()},
        **{f"telemetry.{k}": float(v) for k, v in info["telemetry"].items()},
        "observation": np.asarray(obs, dtype=np.float32).tolist(),
        # the meta-state deviation scores (early-warning signals), where the env reports them
        **{k: float(info[k]) for k in DEVIATION_KEYS if info.get(k) is not None},
    }


def _keys(group: Group, pert: Perturbation | None) -> dict[str, Any]:
    recipe = group.recipe
    keys: dict[str, Any] = {
        "recipe": recipe.name,
        "env": recipe.env,
        "env_kwargs": json.dumps(recipe.env_kwargs, sort_keys=True),
        "stabilizers": ", ".join(s.label() for s in recipe.stabilizers),
        "seed": group.seed,
        "onset": group.onset,
        "horizon": group.horizon,
        "tolerance": group.tolerance,
    }
    if pert is None:
        return {
            **keys,
            "run_id": group.baseline_id,
            "kind": "baseline",
            "intervention": BASELINE,
            "dimension": BASELINE,
        }
    intervention = registry.get(pert.name)
    return {
        **keys,
        "run_id": pert.run_id,
        "kind": "perturbed",
        "intervention": pert.name,
        "dimension": intervention.dimension.value,
        "log_scale": intervention.log_scale,
        "low": intervention.low,
        "high": intervention.high,
        "magnitude": pert.magnitude,
        "duration": pert.window,
    }


def _row(
    group: Group,
    pert: Perturbation | None,
    branch: _Branch,
    started: float,
    base: _Branch | None = None,
) -> dict[str, Any]:
    row = {**_keys(group, pert), "status": "ok", "collapse_reason": branch.collapse}
    if base is None:
        row["collapsed"] = branch.collapse is not None
    else:
        metrics = run_metrics(base.p, branch.p, group.tolerance, branch.collapse is not None)
        row.update(vars(metrics))
        row["baseline_collapse_reason"] = base.collapse
    row["wall_s"] = time.perf_counter() - started
    return row


def _prefix_collapsed(
    group: Group, prefix: list[dict[str, Any]], reason: str, started: float
) -> list[RunRecord]:
    """The unperturbed run collapsed before the onset: nothing to compare; record why."""
    records = []
    if group.write_baseline:
        row = {
            **_keys(group, None),
            "status": "prefix_collapsed",
            "collapse_reason": reason,
            "collapsed": True,
            "wall_s": time.perf_counter() - started,
        }
        records.append(RunRecord(row, prefix))
    unknown = {f.name: math.nan for f in fields(RunMetrics)} | {"collapsed": None}
    for pert in group.perturbations:
        row = {**_keys(group, pert), "status": "prefix_collapsed", **unknown, "wall_s": 0.0}
        records.append(RunRecord(row, []))
    return records


# -- the audit ------------------------------------------------------------------------------
def run_audit(
    plan: AuditPlan,
    out: str | Path,
    *,
    backend: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: bool | None = None,
    on_record: Callable[[RunRecord], None] | None = None,
    flush_seconds: float = FLUSH_SECONDS,
) -> ResultStore:
    """Run ``plan`` (resuming whatever ``out`` already holds) and return the results store.

    Args:
        plan: The plan; checked against the environments before anything runs.
        out: Output directory.
        backend, workers, address: Override the plan's execution settings (``backend``:
            one of :data:`~trainenv.audit.backends.BACKENDS`; ``population`` packs the runs
            into populations, see :mod:`trainenv.audit.population`; ``ray`` runs one
            population batch per task where every recipe has a population form).
        progress: False hides the progress display (see :func:`~trainenv.audit.tasks.run_tasks`).
        on_record: Called with each run as it is stored.
        flush_seconds: Finished runs are written in batches at least this often (of at most
            :data:`~trainenv.audit.store.BATCH_RUNS` runs, and on exit); ``kill -9`` loses at
            most these and the runs in flight. 0 writes each run as it finishes.
    """
    name = plan.resolved_backend(backend)
    workers = plan.resolved_workers(name) if workers is None else workers
    pool = make_backend(name, workers, address or plan.address)
    plan.check()
    store = ResultStore(out, batch_runs=BATCH_RUNS, flush_seconds=flush_seconds)
    with store:  # locks ``out``; on leaving, however, writes the last batch and unlocks
        (store.root / "plan.yaml").write_text(plan.to_yaml())
        groups = plan_groups(plan, store.finished())
        pending = sum(g.n_runs for g in groups)
        fn: Callable[[Any], list[RunRecord]] = run_group
        tasks: list[Any] = groups
        # Ray runs populations as its tasks where the plan has them (auto's rule).
        populations = name == "ray" and plan.resolved_backend("auto") == "population"
        if name == "population" or populations:
            from trainenv.audit.population import pack, run_batch

            fn, tasks = run_batch, pack(groups, workers)
        run_tasks(fn, tasks, store, list, backend=pool, total=plan.n_runs,
                  done=plan.n_runs - pending, desc="audit", progress=progress,
                  on_record=on_record)  # fmt: skip
    return store
