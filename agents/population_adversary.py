"""Hidden adversaries over a population: every member of a
:class:`~trainenv.PopulationVectorEnv` is an :class:`~agents.adversary.AdversaryWrapper`
episode, and the whole population trains in one batched computation.

Member ``i`` of ``AdversarialPopulation`` reset with ``seed=s`` draws its run seeds and schedule
seeds as ``AdversaryWrapper.reset(seed=s + i)`` and its later seedless resets do (the same
split, the same stream), so training on a population sees the runs and schedules that
``make_vec_env(..., seed=s)`` of the single-run wrapper would. Episodes restart within the step
that ends them (gymnasium's same-step autoreset), so :class:`~trainenv.SB3VecEnv` turns the
population into a stable-baselines3 ``VecEnv``::

    population = gym.make_vec(env_id, num_envs=8, vectorization_mode="vector_entry_point",
                              autoreset_mode="disabled")
    venv = SB3VecEnv(AdversarialPopulation(population, distribution))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorWrapper
from gymnasium.vector.utils import batch_space

from agents.adversary import (
    TRAIN_SPLIT,
    AdversarialSchedule,
    AgentActions,
    ScheduleDistribution,
    SeedSplit,
    _agent_spec,
    _check_fits,
    _draw,
    _stabilizers,
)
from agents.observation import progress_observation, progress_space
from trainenv import PopulationVectorEnv, unbatch_infos


class AdversarialPopulation(VectorWrapper):
    """A population under hidden adversarial schedules, one per member; the agent stabilizes.

    Observations, rewards, terminations and infos are the population's (with ``run_seed`` and
    ``schedule_seed`` in the info of each reset); actions are the agent's, per member, as in
    :class:`~agents.adversary.AdversaryWrapper` (same ``agent_actions``, ``stabilizers``,
    ``levels``). Member ``i``'s shocks of the step go to ``intervene`` with its stabilizers.

    Args:
        env: A :class:`~trainenv.PopulationVectorEnv` with ``autoreset_mode="disabled"``
            (this wrapper restarts members itself, with seeds from ``split``) offering the
            distribution's perturbations and the agent's stabilizers.
        distribution: The adversary's schedules.
        agent_actions, stabilizers, levels, split, progress: As for ``AdversaryWrapper``.
    """

    def __init__(
        self,
        env: PopulationVectorEnv,
        distribution: ScheduleDistribution,
        *,
        agent_actions: AgentActions = "discrete",
        stabilizers: Sequence[str] | None = None,
        levels: int = 3,
        split: SeedSplit = TRAIN_SPLIT,
        progress: bool = False,
    ) -> None:
        if not isinstance(env, PopulationVectorEnv) or env.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError(
                "env: needs a PopulationVectorEnv with autoreset_mode='disabled', got "
                f"{type(env).__name__} ({getattr(env, 'autoreset_mode', None)})"
            )
        offered = {i.name: i for i in env.interventions}
        _check_fits(distribution, offered, env.settings.max_steps)
        super().__init__(env)
        self.population_env = env
        self.agent_spec = _agent_spec(agent_actions, _stabilizers(offered, stabilizers), levels)
        self.distribution, self.split, self.progress = distribution, split, progress
        self.single_action_space = self.agent_spec.space
        self.action_space = batch_space(self.single_action_space, env.num_envs)
        if progress:
            self.single_observation_space = progress_space(env.single_observation_space)
            self.observation_space = batch_space(self.single_observation_space, env.num_envs)
        self.metadata = {**env.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        n = env.num_envs
        self._rngs: list[np.random.Generator | None] = [None] * n
        self.schedules: list[AdversarialSchedule | None] = [None] * n
        self._step_index = np.zeros(n, dtype=np.int64)

    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError(f"options: none are accepted, got {sorted(options)}")
        n = self.num_envs
        if isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(n)]
        if seed is not None and (isinstance(seed, (str, bytes)) or len(seed) != n):
            raise ValueError(f"seed must be an integer, None or a list of {n}, got {seed!r}")
        for i in range(n):
            if seed is not None or self._rngs[i] is None:
                self._rngs[i] = np.random.default_rng(None if seed is None else seed[i])
        obs, infos = self._restart(np.ones(n, dtype=bool))
        return self._observe(obs, unbatch_infos(infos, n)), infos

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every member with the agent's action (``actions[i]``) and its schedule's shocks."""
        schedules = [s for s in self.schedules if s is not None]
        if len(schedules) != self.num_envs:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"actions must have one action per member, got shape {actions.shape}")
        # The agent's menu or box holds its stabilizers only: a decoded action applies no other.
        interventions = [
            {**self.agent_spec.decode(a), **schedule.at(int(index))}
            for a, schedule, index in zip(actions, schedules, self._step_index)
        ]
        self._step_index += 1
        obs, rewards, terminations, truncations, infos = self.population_env.intervene(
            interventions
        )
        done = terminations | truncations
        ended = unbatch_infos(infos, self.num_envs)
        if not done.any():
            return self._observe(obs, ended), rewards, terminations, truncations, infos
        # Same-step autoreset: the ended members' last observation and info go to final_obs
        # and final_info, their entries to the restarted episodes'.
        final_obs = self._observe(obs, ended)
        restarted_obs, restarted = self._restart(done)
        restarted_infos = unbatch_infos(restarted, self.num_envs)
        now = [restarted_infos[i] if done[i] else ended[i] for i in range(self.num_envs)]
        obs = self._observe(np.where(done[:, None], restarted_obs, obs), now)
        merged: dict[str, Any] = {}
        for i in range(self.num_envs):
            if done[i]:
                final = {"final_obs": final_obs[i], "final_info": ended[i]}
                merged = self._add_info(merged, final, i)
            merged = self._add_info(merged, now[i], i)
        return obs, rewards, terminations, truncations, merged

    def _observe(self, obs: np.ndarray, infos: Sequence[dict[str, Any]]) -> np.ndarray:
        """The agent's observations (``progress``: :func:`progress_observation` per member)."""
        if not self.progress:
            return obs
        return np.stack([progress_observation(o, info) for o, info in zip(obs, infos)])

    def _restart(self, mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw run and schedule seeds for the ``mask``ed members and reset them."""
        run_seeds: list[int | None] = [None] * self.num_envs
        for i in np.flatnonzero(mask):
            rng = self._rngs[i]
            assert rng is not None
            # Both seeds every reset, in AdversaryWrapper's order: the same stream.
            run_seeds[i] = _draw(rng, self.split.run)
            schedule_seed = _draw(rng, self.split.schedule)
            self.schedules[i] = self.distribution.sample(schedule_seed)
            self._step_index[i] = 0
        obs, infos = self.population_env.reset(seed=run_seeds, options={"reset_mask": mask})
        infos["run_seed"] = np.array([s if s is not None else -1 for s in run_seeds])
        infos["schedule_seed"] = np.array([s.seed if s is not None else -1 for s in self.schedules])
        infos["_run_seed"] = infos["_schedule_seed"] = mask.copy()
        return obs, infos


def make_adversarial_population(
    env_id: str,
    num_envs: int,
    distribution: ScheduleDistribution,
    *,
    agent_actions: AgentActions = "discrete",
    stabilizers: Sequence[str] | None = None,
    levels: int = 3,
    split: SeedSplit = TRAIN_SPLIT,
    progress: bool = False,
    **env_kwargs: Any,
) -> AdversarialPopulation:
    """``env_id``'s population form with ``num_envs`` members (``gym.make_vec`` with its vector
    entry point, ``env_kwargs`` as for the single-run env) under adversaries; see
    :class:`AdversarialPopulation`."""
    reserved = sorted(set(env_kwargs) & {"action_mode", "interventions", "autoreset_mode"})
    if reserved:
        raise ValueError(f"env_kwargs: {reserved} are set by the adversarial population")
    env = gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
        action_mode="continuous", autoreset_mode="disabled", **env_kwargs,
    )  # fmt: skip
    return AdversarialPopulation(
        env, distribution, agent_actions=agent_actions, stabilizers=stabilizers,
        levels=levels, split=split, progress=progress,
    )  # fmt: skip
