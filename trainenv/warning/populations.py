"""Early-warning runs on populations: the tasks of one env trained as members of one population.

Where a task's env has a population form (its id's vector entry point takes the task's
``env_kwargs``: Digits-MLP and CartPole-PPO), :func:`work_units` packs its tasks into
populations, with the audit's machinery (:func:`~trainenv.audit.population.balance` sizes
them, :func:`~trainenv.audit.population.population_env` builds and caches the vector env).
:func:`simulate_batch` runs one: member ``i`` is task ``i``'s seed, its ramp's magnitude goes
to member ``i`` alone through :meth:`~trainenv.vector.PopulationVectorEnv.intervene`, and
each member is recorded as :func:`~trainenv.warning.simulation.simulate_run` records a run
(same channels, same window features, same collapse onset), until its episode ends.

A member's trajectory does not depend on the others in its population (batch-invariance),
but the population trainer is another implementation than the single-run trainer, so its
traces equal the per-run path's only statistically (for CartPole PPO; see the README's
populations section for the measured equivalence).

Backends (:data:`SIMULATION_BACKENDS`, the audit's rule): ``auto`` runs the tasks of envs
with a population form as populations and the others (TinyLM) one per run; ``population``
insists (``ValueError`` naming the envs without one); ``process`` and ``serial`` run every
task alone (a pool of worker processes; this process).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from trainenv.audit.plan import Recipe
from trainenv.audit.population import balance, population_env
from trainenv.warning.recording import Recording, simulate_run
from trainenv.warning.simulation import Task, Trace

__all__ = ["SIMULATION_BACKENDS", "WorkUnit", "simulate_batch", "simulate_unit", "work_units"]

SIMULATION_BACKENDS = ("auto", "population", "process", "serial")
"""How :func:`~trainenv.warning.simulation.simulate_runs` runs its tasks (see above)."""

WorkUnit = Task | tuple[Task, ...]
"""One task run alone, or tasks of one env run as the members of one population."""


def _recipe(task: Task) -> Recipe:
    """The audit's recipe of a task's env and keywords (what has and builds its population)."""
    return Recipe(name=task.env, env=task.env, env_kwargs=dict(task.env_kwargs))


def work_units(tasks: Sequence[Task], backend: str, workers: int) -> list[WorkUnit]:
    """``tasks`` as the units ``backend`` runs them in, in the order of their first task.

    With populations (``auto``, ``population``), the tasks of one env, keywords and offered
    interventions are split into populations by :func:`~trainenv.audit.population.balance`
    (at least ``workers`` where there are enough tasks, at most ~64 members each).
    ``ValueError`` for an unknown backend, or ``population`` with an env that has no
    population form, before any work.
    """
    if backend not in SIMULATION_BACKENDS:
        raise ValueError(f"backend must be one of {list(SIMULATION_BACKENDS)}, got {backend!r}")
    if backend in ("process", "serial"):
        return list(tasks)
    by_key: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        key = json.dumps([task.env, task.env_kwargs, task.interventions], sort_keys=True)
        by_key.setdefault(key, []).append(index)
    alone = [i for same in by_key.values() if not _recipe(tasks[same[0]]).has_population()
             for i in same]  # fmt: skip
    if backend == "population" and alone:
        missing = sorted({tasks[i].env for i in alone})
        raise ValueError(
            f"backend 'population' needs envs with a population form; {missing} have none "
            "(no vector entry point, or its population does not take the task's env_kwargs; "
            "use backend 'auto' or 'process')"
        )
    units: list[tuple[int, WorkUnit]] = [(i, tasks[i]) for i in alone]
    for same in by_key.values():
        if same[0] not in alone:
            bins = balance([1] * len(same), workers)
            units += [(same[b[0]], tuple(tasks[same[j]] for j in b)) for b in bins]
    return [unit for _, unit in sorted(units, key=lambda pair: pair[0])]


def simulate_unit(unit: WorkUnit) -> list[Trace]:
    """A work unit's traces, in its tasks' order (a picklable function for the backends)."""
    return simulate_batch(unit) if isinstance(unit, tuple) else [simulate_run(unit)]


def simulate_batch(tasks: Sequence[Task]) -> list[Trace]:
    """Run ``tasks`` (one env, keywords and offered interventions) as the members of one
    population, member ``i`` task ``i``; their traces, in order."""
    from trainenv.vector import unbatch_infos

    n, first = len(tasks), tasks[0]
    env = population_env(_recipe(first), first.interventions, n, "warning")
    settings, channels = env.settings, env.population.channels
    names = tuple(c.name for c in channels)
    _, infos = env.reset(seed=[t.seed for t in tasks])
    recordings = [
        Recording.start(task, settings.encoder, names, info["p"])
        for task, info in zip(tasks, unbatch_infos(infos, n))
    ]
    live = np.ones(n, dtype=bool)
    for step in range(1, settings.max_steps + 1):
        # An ended member restarts on the next step (autoreset) and is no longer recorded.
        ramped = [r.ramped(step) if live[i] else {} for i, r in enumerate(recordings)]
        _, _, terminated, truncated, infos = env.intervene(ramped)
        for i, info in enumerate(unbatch_infos(infos, n)):
            if live[i]:
                recordings[i].add(info, env.telemetry_window(i), bool(terminated[i]))
                live[i] = not (terminated[i] or truncated[i])
        if not live.any():
            break
    roles = tuple(c.role for c in channels)
    return [r.trace(settings.k, settings.collapse_rule, roles) for r in recordings]
