"""Running a controller's evaluation episodes: one at a time on the single-run env
(:func:`run_episode`) or as the members of a population (:func:`run_population`), each episode
an audit-store record (:class:`~trainenv.audit.RunRecord`) with the metrics of
:mod:`agents.evaluate`.

Member ``i`` of a population is episode ``i``: its run seed, its schedule's shocks and its own
controller instance; one batched computation advances all members, so a CartPole-PPO or
Digits-MLP evaluation of N episodes costs about one episode's wall time per step batch rather
than N. A member equals the single-run trainer statistically, not bit for bit, and members do
not affect each other (a member's outcome is the one it has alone, in a population of one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from agents.adversary import AdversaryWrapper
from agents.encoding import unwrap
from trainenv import PopulationVectorEnv, Role, get_intervention, unbatch_infos
from trainenv.audit import CONTROLLER, RunRecord, run_id, step_row


class Controller(Protocol):
    """What :func:`agents.evaluate.evaluate` drives: the protocol of every controller in
    :mod:`agents`."""

    def reset(self) -> None: ...

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any: ...


ControllerFactory = Callable[[AdversaryWrapper], Controller]
"""Builds a controller on the evaluation env; its ``act`` returns an action of the inner
env's space (:meth:`AdversaryWrapper.step_inner`), as :func:`agents.encode` builds it."""


@dataclass(frozen=True)
class Episode:
    """One evaluation episode: the run seed and the adversary's schedule seed."""

    run_seed: int
    schedule_seed: int


def run_episode(
    env: AdversaryWrapper, name: str, controller: Controller, episode: Episode
) -> RunRecord:
    """One episode of ``controller`` (labelled ``name``) on ``env``, as an audit-store record:
    its row (keys and the metrics of the module docstring) and its steps."""
    started = time.perf_counter()
    obs, info = env.reset(
        options={"run_seed": episode.run_seed, "schedule_seed": episode.schedule_seed}
    )
    controller.reset()
    log = _EpisodeLog(env, name, episode, obs, info)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step_inner(controller.act(obs, info))
        log.add(obs, info)
    assert env.schedule is not None
    return log.record(env.schedule.describe(), time.perf_counter() - started)


def has_population(env: AdversaryWrapper) -> bool:
    """Whether ``env``'s run has a population form (a registered vector entry point)."""
    spec = unwrap(env).spec
    return spec is not None and gym.spec(spec.id).vector_entry_point is not None


def run_population(
    env: AdversaryWrapper,
    name: str,
    make: ControllerFactory,
    episodes: Sequence[Episode],
    members: int = 32,
) -> list[RunRecord]:
    """The ``episodes`` of the controller ``make`` builds (labelled ``name``) as the members of
    populations of at most ``members``, as :func:`run_episode`'s records (``wall_s``: the
    population's wall time shared equally among its members).

    Member ``i`` is episode ``i``: reset with its run seed, struck by the shocks of its
    schedule (``env.distribution.sample(schedule_seed)``, applied at the member's step as
    :class:`~agents.adversary.AdversaryWrapper` applies them) and controlled by its own
    ``make(env)``, which observes as ``env`` does (:meth:`~agents.adversary.AdversaryWrapper.
    observe`) and whose actions (of the inner env's space) decode through
    :meth:`~agents.adversary.AdversaryWrapper.decode_inner`. ``env`` is only read.
    """
    if not has_population(env):
        raise ValueError(f"env: {env_name(env)} has no population form")
    for e in episodes:
        env.split.check("run", e.run_seed)
        env.split.check("schedule", e.schedule_seed)
    records: list[RunRecord] = []
    for start in range(0, len(episodes), members):
        records += _run_members(env, name, make, episodes[start : start + members])
    return records


def _run_members(
    env: AdversaryWrapper, name: str, make: ControllerFactory, episodes: Sequence[Episode]
) -> list[RunRecord]:
    started = time.perf_counter()
    spec = unwrap(env).spec
    assert spec is not None
    n = len(episodes)
    # Next-step autoreset: a member that ended early restarts on the next step (its results
    # are no longer read) while the others carry on; members do not affect each other.
    vec = gym.make_vec(
        spec.id, num_envs=n, vectorization_mode="vector_entry_point",
        autoreset_mode="next_step", **spec.kwargs,
    )  # fmt: skip
    population = vec.unwrapped
    assert isinstance(population, PopulationVectorEnv)
    try:
        schedules = [env.distribution.sample(e.schedule_seed) for e in episodes]
        controllers = [make(env) for _ in episodes]
        obs, batched = population.reset(seed=[e.run_seed for e in episodes])
        infos = unbatch_infos(batched, n)
        seen = [env.observe(o, info) for o, info in zip(obs, infos)]  # what env's agent sees
        logs = [_EpisodeLog(env, name, e, seen[i], infos[i]) for i, e in enumerate(episodes)]
        for controller in controllers:
            controller.reset()
        live, step = np.ones(n, dtype=bool), 0
        while live.any():
            actions = [
                {**env.decode_inner(c.act(seen[i], infos[i])), **schedules[i].at(step)}
                if live[i] else {}
                for i, c in enumerate(controllers)
            ]  # fmt: skip
            obs, _, terminated, truncated, batched = population.intervene(actions)
            infos = unbatch_infos(batched, n)
            seen = [env.observe(o, info) for o, info in zip(obs, infos)]
            for i in np.flatnonzero(live):
                logs[i].add(seen[i], infos[i])
            live &= ~(terminated | truncated)
            step += 1
    finally:
        vec.close()
    wall_s = (time.perf_counter() - started) / n
    return [log.record(s.describe(), wall_s) for log, s in zip(logs, schedules)]


class _EpisodeLog:
    """One episode's steps and running metrics, turned into an audit-store record."""

    def __init__(
        self, env: AdversaryWrapper, name: str, episode: Episode, obs: Any, info: Any
    ) -> None:
        inner = unwrap(env)
        self.name, self.horizon = name, inner.max_steps
        self.keys = {
            "recipe": name,
            "env": env_name(env),
            "distribution": env.distribution.model_dump_json(),
            "seed": episode.run_seed,
            "schedule_seed": episode.schedule_seed,
        }
        self.rid = run_id(self.keys)
        self.steps = [step_row(self.rid, 0, obs, info)]
        self.p = np.zeros(self.horizon)
        self.cost, self.interventions = 0.0, 0
        self.collapse: str | None = None

    def add(self, obs: Any, info: Mapping[str, Any]) -> None:
        self.steps.append(step_row(self.rid, len(self.steps), obs, dict(info)))
        self.p[len(self.steps) - 2] = info["p"]
        stabilizers = [get_intervention(n) for n, _ in info["applied"]]
        stabilizers = [i for i in stabilizers if i.role is Role.STABILIZER]
        self.cost += sum(i.cost for i in stabilizers)
        self.interventions += len(stabilizers)
        self.collapse = info["collapse"]

    def record(self, schedule: str, wall_s: float) -> RunRecord:
        row = {
            **self.keys,
            "run_id": self.rid,
            "kind": CONTROLLER,
            "status": "ok",
            "controller": self.name,
            "schedule": schedule,
            "horizon": self.horizon,
            "collapsed": self.collapse is not None,
            "collapse_reason": self.collapse,
            "final_p": float(self.p[-1]),
            "auc": float(self.p.mean()),
            "cost": self.cost,
            "interventions": self.interventions,
            "steps_run": len(self.steps) - 1,
            "wall_s": wall_s,
        }
        return RunRecord(row, self.steps)


def env_name(env: AdversaryWrapper) -> str:
    """The registered id of ``env``'s run (its trainer's class name if unregistered)."""
    inner = unwrap(env)
    return inner.spec.id if inner.spec else type(inner.trainer).__name__
