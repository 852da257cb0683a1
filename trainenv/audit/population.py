"""Audits on populations: several groups' paired runs trained as members of one population.

The unit of work is a :class:`PopulationBatch`: groups of one recipe and onset (see
:mod:`trainenv.audit.runner`). Their shared prefixes run as the members of one population
(member ``i``: group ``i``'s seed, stabilizers held on), then each group's prefix member is
forked (:meth:`~trainenv.vector.PopulationVectorEnv.fork_member`) into the slots of its
unperturbed and perturbed branches in a second population, whose members all advance
together for the horizon. Each member's episode is :class:`~trainenv.env.TrainEnv`'s (knob
schedule, collapse rule, reward, meta-state deviations), and the records are the per-run
runner's: same run ids, same columns, same resumption. A member's numbers do not depend on
the batch it runs in (batch-invariance), so a group's records are the same in any batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainenv.audit.runner import (
    Group,
    _Branch,
    _prefix_collapsed,
    _row,
    step_row,
)
from trainenv.audit.store import RunRecord

if TYPE_CHECKING:
    from trainenv.audit.plan import Recipe
    from trainenv.vector import PopulationVectorEnv

MAX_MEMBERS = 64
"""Branches per batch at most: past ~32 members a population gains little per member, and a
smaller batch loses less when an audit is interrupted (measured on these machines)."""


@dataclass(frozen=True)
class PopulationBatch:
    """Groups of one recipe and onset whose runs train as members of one population."""

    groups: tuple[Group, ...]

    @property
    def n_runs(self) -> int:
        return sum(g.n_runs for g in self.groups)

    @property
    def n_members(self) -> int:
        """Members of the branch population: each group's baseline and perturbed branches."""
        return sum(1 + len(g.perturbations) for g in self.groups)


def pack(groups: Sequence[Group], workers: int = 1) -> list[PopulationBatch]:
    """``groups`` packed into batches of one recipe and onset: per recipe and onset, enough
    batches for :data:`MAX_MEMBERS` branches each on average, and at least ``workers`` where
    there are enough groups, filled evenly (a group is never split)."""
    by_key: dict[str, list[Group]] = {}
    for group in groups:
        by_key.setdefault(json.dumps([group.recipe.key(), group.onset]), []).append(group)
    batches: list[PopulationBatch] = []
    for same in by_key.values():
        bins = balance([1 + len(g.perturbations) for g in same], workers)
        batches += [PopulationBatch(tuple(same[j] for j in b)) for b in bins]
    return batches


def balance(sizes: Sequence[int], workers: int = 1) -> list[list[int]]:
    """Items of ``sizes`` members each (one recipe) split into populations: enough for
    :data:`MAX_MEMBERS` members each on average, and at least ``workers`` where there are
    enough items, filled evenly (largest first, each into the emptiest); each population as
    its items' indices, in their original order, empty ones left out."""
    n_bins = min(len(sizes), max(workers, -(-sum(sizes) // MAX_MEMBERS)))
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    loads = [0] * n_bins
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        j = loads.index(min(loads))  # the emptiest population (largest items first)
        bins[j].append(index)
        loads[j] += sizes[index]
    return [sorted(b) for b in bins if b]


# -- one batch --------------------------------------------------------------------------------
_ENVS: dict[str, PopulationVectorEnv] = {}  # per process: building a population is slow


def population_env(
    recipe: Recipe, interventions: Sequence[str], n_members: int, role: str
) -> PopulationVectorEnv:
    """``recipe``'s population env of ``n_members`` offering ``interventions``, built once per
    process and reused (reset is complete) for ``role``: a caller that holds two populations
    at once (an audit batch's "prefix" and "branches") gives them different roles, so they
    are never the same object."""
    key = json.dumps([recipe.key(), list(interventions), n_members, role])
    if key not in _ENVS:
        _ENVS[key] = recipe.make_population(n_members, list(interventions))
    return _ENVS[key]


def _env(group: Group, n_members: int, role: str) -> PopulationVectorEnv:
    """The group's recipe's population env (its actions and stabilizers on offer)."""
    names = [*group.action_names, *(s.name for s in group.recipe.stabilizers)]
    return population_env(group.recipe, names, n_members, role)


def run_batch(batch: PopulationBatch) -> list[RunRecord]:
    """Run a batch: the groups' prefixes as one population, then all their branches as
    another; the records of every run of every group, as the per-run runner writes them."""
    from trainenv.vector import unbatch_infos

    started = time.perf_counter()
    groups = batch.groups
    holds = [{s.name: s.magnitude for s in g.recipe.stabilizers} for g in groups]
    prefix_env = _env(groups[0], len(groups), "prefix")
    obs, infos = prefix_env.reset(seed=[g.seed for g in groups])
    prefixes = [
        [step_row(g.baseline_id, 0, obs[i], info)]
        for i, (g, info) in enumerate(zip(groups, unbatch_infos(infos, len(groups))))
    ]
    collapsed: dict[int, str] = {}  # group index -> collapse reason, for prefixes that did
    for t in range(1, groups[0].onset + 1):
        obs, _, terminated, _, infos = prefix_env.intervene(holds)
        for i, info in enumerate(unbatch_infos(infos, len(groups))):
            if i not in collapsed:
                prefixes[i].append(step_row(groups[i].baseline_id, t, obs[i], info))
                if terminated[i]:
                    collapsed[i] = info["collapse"]

    # One slot per branch: (group index, run id, schedule), the baseline first in each group.
    slots: list[tuple[int, str, list[dict[str, float]]]] = []
    for i, group in enumerate(groups):
        if i in collapsed:
            continue
        slots.append((i, group.baseline_id, [holds[i]] * group.horizon))
        for pert in group.perturbations:
            hit, issued = {**holds[i], pert.name: pert.magnitude}, pert.issued_over(holds[i])
            rest = [holds[i]] * (group.horizon - issued)
            slots.append((i, pert.run_id, [hit] * issued + rest))
    branches = _run_branches(prefix_env, groups, slots) if slots else {}

    records: list[RunRecord] = []
    for i, group in enumerate(groups):
        if i in collapsed:
            records += _prefix_collapsed(group, prefixes[i], collapsed[i], started)
            continue
        base = branches[group.baseline_id]
        if group.write_baseline:
            records.append(RunRecord(_row(group, None, base, started), prefixes[i] + base.steps))
        for pert in group.perturbations:
            branch = branches[pert.run_id]
            row = _row(group, pert, branch, started, base)
            row["applied_magnitude"] = branch.applied[pert.name]  # as the env reports it
            records.append(RunRecord(row, branch.steps))
    # Members share each step's time: each run is charged the batch's time per run.
    share = (time.perf_counter() - started) / max(1, len(records))
    for record in records:
        record.row["wall_s"] = share
    return records


def _run_branches(
    prefix_env: PopulationVectorEnv,
    groups: Sequence[Group],
    slots: list[tuple[int, str, list[dict[str, float]]]],
) -> dict[str, _Branch]:
    """Fork each slot's group prefix member into a population of branches and apply each
    slot's schedule; every branch by run id."""
    from trainenv.vector import unbatch_infos

    n = len(slots)
    env = _env(groups[0], n, "branches")
    env.reset(seed=[groups[i].seed for i, _, _ in slots])
    for slot, (i, _, _) in enumerate(slots):
        env.fork_member(i, slot, source=prefix_env)
    horizon, onset = groups[0].horizon, groups[0].onset
    steps: list[list[dict[str, Any]]] = [[] for _ in slots]
    collapse: list[str | None] = [None] * n
    applied: list[dict[str, float]] = [{} for _ in slots]
    live = np.ones(n, dtype=bool)
    for h in range(1, horizon + 1):
        actions = [schedule[h - 1] if live[s] else {} for s, (_, _, schedule) in enumerate(slots)]
        obs, _, terminated, _, infos = env.intervene(actions)
        for s, info in enumerate(unbatch_infos(infos, n)):
            if not live[s]:
                continue
            steps[s].append(step_row(slots[s][1], onset + h, obs[s], info))
            if h == 1:
                applied[s] = dict(info["applied"])
            if terminated[s]:
                collapse[s], live[s] = info["collapse"], False
    branches = {}
    for s, (_, rid, _) in enumerate(slots):
        p = np.zeros(horizon)
        p[: len(steps[s])] = [row["p"] for row in steps[s]]
        branches[rid] = _Branch(steps[s], p, collapse[s], applied[s])
    return branches
