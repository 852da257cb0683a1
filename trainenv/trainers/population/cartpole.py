"""The inner environments of a CartPole population: each member's own CartPole-v1 envs.

All members' environments step as one gymnasium ``CartPoleVectorEnv`` (numpy-vectorised
physics), but each member's episodes start from its own generator, so a member's environments
do not depend on the others. Episodes reset in the same step they end (stable-baselines3's
``DummyVecEnv`` semantics: the step returns the first observation of the next episode and the
last one of the finished episode separately), not gymnasium's next-step autoreset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

_INIT_LOW, _INIT_HIGH = -0.05, 0.05  # CartPole-v1's initial-state range


class MemberCartPoles:
    """``n_envs`` CartPole-v1 environments for each of ``n_members`` members.

    Attributes:
        episodes: Per member, the true returns of its latest ``perf_episodes`` finished
            episodes (the Monitor returns stable-baselines3 averages into performance).
    """

    def __init__(self, n_members: int, n_envs: int, perf_episodes: int) -> None:
        self.n_members, self.n_envs = n_members, n_envs
        # The vector env supplies the physics; its own generator is never drawn from, since
        # every reset is done here (it is seeded only so that it exists).
        self.env = CartPoleVectorEnv(num_envs=n_members * n_envs)
        self.env.reset(seed=0)
        self._rngs = [np.random.default_rng(0) for _ in range(n_members)]
        self._return = np.zeros((n_members, n_envs))
        self.episodes: list[deque[float]] = [deque(maxlen=perf_episodes) for _ in range(n_members)]

    @property
    def _state(self) -> np.ndarray:
        """The vector env's physical state ``(4, n_members * n_envs)``, float64 (a new array
        after every step: read it through this property)."""
        return cast(np.ndarray, self.env.state)

    def reset_member(self, member: int, rng: np.random.Generator) -> np.ndarray:
        """Start ``member``'s environments afresh from ``rng``; returns their observations
        ``(n_envs, 4)``."""
        self._rngs[member] = rng
        cols = self._columns(np.array([member]))
        self._state[:, cols] = rng.uniform(_INIT_LOW, _INIT_HIGH, size=(4, self.n_envs))
        self.env.steps[cols] = 0
        self._return[member] = 0.0
        self.episodes[member].clear()
        return self._state[:, cols].T.astype(np.float32)

    def step(
        self, index: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step the environments of members ``index`` (ascending, distinct) with ``actions``
        ``(G, n_envs)``; the others do not move.

        Returns ``(obs, rewards, terminated, truncated, final_obs)``, each ``(G, n_envs, ...)``:
        ``obs`` starts the next episode where one ended, ``final_obs`` is the observation the
        step reached (the last of an episode that ended).
        """
        env, shape = self.env, (len(index), self.n_envs)
        if len(index) == self.n_members:  # every member (index is sorted): nothing to freeze
            final, rewards, terminated, truncated, _ = env.step(actions.reshape(-1))
            cols: np.ndarray | slice = slice(None)
        else:
            cols = self._columns(index)
            frozen = np.setdiff1d(np.arange(env.num_envs), cols)
            kept = (self._state[:, frozen].copy(), env.steps[frozen].copy())
            full = np.zeros(env.num_envs, dtype=np.int64)
            full[cols] = actions.reshape(-1)
            final, rewards, terminated, truncated, _ = env.step(full)
            self._state[:, frozen], env.steps[frozen] = kept
        final, rewards = final[cols].reshape(*shape, 4), rewards[cols].reshape(shape)
        terminated, truncated = terminated[cols].reshape(shape), truncated[cols].reshape(shape)
        done = terminated | truncated
        self._return[index] += rewards
        for g, e in zip(*np.nonzero(done)):  # member-major, env order: SB3's episode order
            member = int(index[g])
            self.episodes[member].append(float(self._return[member, e]))
            self._return[member, e] = 0.0
            col = member * self.n_envs + e
            self._state[:, col] = self._rngs[member].uniform(_INIT_LOW, _INIT_HIGH, size=4)
            env.steps[col] = 0
        env.prev_done[:] = False  # the resets are done: the vector env must not redo them
        obs = self._state[:, cols].T.astype(np.float32).reshape(*shape, 4)
        return obs, rewards, terminated, truncated, final

    def performance(self, floor: float) -> np.ndarray:
        """Shape ``(n_members,)``: mean true return of each member's latest episodes (``floor``
        before any)."""
        return np.array([np.mean(e) if e else floor for e in self.episodes], dtype=np.float64)

    def member_state(self, member: int) -> dict[str, Any]:
        cols = self._columns(np.array([member]))
        return {
            "state": self._state[:, cols].copy(),
            "steps": self.env.steps[cols].copy(),
            "rng": _copy_generator(self._rngs[member]),
            "return": self._return[member].copy(),
            "episodes": list(self.episodes[member]),
        }

    def load_member_state(self, member: int, state: Mapping[str, Any]) -> None:
        cols = self._columns(np.array([member]))
        self._state[:, cols] = state["state"]
        self.env.steps[cols] = state["steps"]
        self._rngs[member] = _copy_generator(state["rng"])
        self._return[member] = state["return"]
        self.episodes[member].clear()
        self.episodes[member].extend(state["episodes"])

    def _columns(self, index: np.ndarray) -> np.ndarray:
        """The vector env's columns of members ``index``, member-major."""
        return (index[:, None] * self.n_envs + np.arange(self.n_envs)).reshape(-1)


def _copy_generator(rng: np.random.Generator) -> np.random.Generator:
    copy = np.random.default_rng()
    copy.bit_generator.state = rng.bit_generator.state
    return copy
