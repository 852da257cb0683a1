"""The perturber-versus-stabilizer game on one training run, as a PettingZoo ``ParallelEnv``.

A *perturber* shocks the run (perturbations, with a budget per episode) and a *stabilizer*
keeps it healthy (stabilizers); both act in the same step, on the same :class:`TrainEnv`. The
stabilizer's reward is the single-agent env's reward (progress minus drawdown, intervention
cost and the collapse penalty); the perturber's is its negative, so the game is zero-sum.
With ``per_dimension=True`` the stabilizer is a team: one agent per stability dimension that
has stabilizers, each choosing among that dimension's stabilizers and sharing the team reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from trainenv.core.actions import DiscreteMenu
from trainenv.core.interventions import Intervention, Role
from trainenv.env import OBS_BOUND, TrainEnv

PERTURBER = "perturber"
STABILIZER = "stabilizer"


class PerturbStabilizeEnv(ParallelEnv):
    """Perturber vs stabilizer(s) on one run.

    Each agent picks from a discrete menu (0: no-op, then its interventions at ``levels``
    magnitudes). Observations, ``float32`` in ``[-10, 10]``: the run's observation (meta-state
    and progress, as in :class:`TrainEnv`), then the share of the perturber's budget left.
    Once the budget is spent the perturber's actions are ignored (``info["budget_left"]``).

    Args:
        env_id: A registered trainenv environment id.
        budget: Perturbations the perturber may apply per episode.
        levels: Magnitudes per intervention on each menu.
        per_dimension: One stabilizer agent per stability dimension instead of one.
        perturbations, stabilizers: Registry names on offer (default: all the run supports).
        env_kwargs: Passed to ``gymnasium.make`` (``k``, ``max_steps``, ``observation``...).
    """

    metadata = {"name": "trainenv_perturb_stabilize_v0", "render_modes": []}

    def __init__(
        self,
        env_id: str = "trainenv/Digits-MLP-v0",
        *,
        budget: int = 5,
        levels: int = 3,
        per_dimension: bool = False,
        perturbations: Sequence[str] | None = None,
        stabilizers: Sequence[str] | None = None,
        **env_kwargs: Any,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
        # The run's own action space is unused: the agents' menus decode to interventions by
        # name, which the run applies together through ``intervene``.
        self.run: TrainEnv = gym.make(env_id, **env_kwargs).unwrapped  # type: ignore[assignment]
        chosen = {
            Role.PERTURBATION: _pick(self.run.interventions, Role.PERTURBATION, perturbations),
            Role.STABILIZER: _pick(self.run.interventions, Role.STABILIZER, stabilizers),
        }
        self.budget = budget
        self.menus = {PERTURBER: DiscreteMenu(chosen[Role.PERTURBATION], levels)}
        if per_dimension:
            for dimension in dict.fromkeys(i.dimension for i in chosen[Role.STABILIZER]):
                group = [i for i in chosen[Role.STABILIZER] if i.dimension is dimension]
                self.menus[f"{STABILIZER}_{dimension.value}"] = DiscreteMenu(group, levels)
        else:
            self.menus[STABILIZER] = DiscreteMenu(chosen[Role.STABILIZER], levels)
        self.possible_agents = list(self.menus)
        self.agents: list[str] = []
        width = self.run.observation_space.shape[0] + 1
        self._observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (width,), np.float32)

    def observation_space(self, agent: str) -> spaces.Box:
        # The same space objects every call: PettingZoo's seed test seeds them in place.
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Discrete:
        return self.menus[agent].space  # type: ignore[return-value]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        obs, info = self.run.reset(seed=seed)
        self.agents = list(self.possible_agents)
        self._budget_left = self.budget
        return self._observe(obs), self._infos(info)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        missing = set(self.agents) - set(actions)
        if missing:
            raise ValueError(f"actions missing for agents {sorted(missing)}")
        # Decode every agent's action first: an invalid one raises before anything changes.
        decoded = {agent: self.menus[agent].decode(actions[agent]) for agent in self.agents}
        if decoded.get(PERTURBER):
            if self._budget_left == 0:
                decoded[PERTURBER] = {}
            else:
                self._budget_left -= 1
        chosen = {name: m for applied in decoded.values() for name, m in applied.items()}
        obs, reward, terminated, truncated, info = self.run.intervene(chosen)
        agents = self.agents
        rewards = {a: (-reward if a == PERTURBER else reward) for a in agents}
        if terminated or truncated:
            self.agents = []
        return (
            self._observe(obs, agents), rewards, dict.fromkeys(agents, terminated),
            dict.fromkeys(agents, truncated), self._infos(info, agents),
        )  # fmt: skip

    def _observe(self, obs: np.ndarray, agents: list[str] | None = None) -> dict[str, np.ndarray]:
        left = self._budget_left / self.budget if self.budget else 0.0
        full = np.append(obs, np.float32(left)).astype(np.float32)
        return {a: full.copy() for a in (agents if agents is not None else self.agents)}

    def _infos(self, info: dict[str, Any], agents: list[str] | None = None) -> dict[str, dict]:
        shared = {**info, "budget_left": self._budget_left}
        return {a: dict(shared) for a in (agents if agents is not None else self.agents)}


def _pick(
    offered: Sequence[Intervention], role: Role, names: Sequence[str] | None
) -> list[Intervention]:
    available = [i for i in offered if i.role is role]
    if names is None:
        if not available:
            raise ValueError(f"the environment offers no {role.value}s")
        return available
    unknown = set(names) - {i.name for i in available}
    if unknown:
        raise ValueError(
            f"{role.value}s {sorted(unknown)} are not offered; available: "
            f"{[i.name for i in available]}"
        )
    return [i for i in available if i.name in names]
