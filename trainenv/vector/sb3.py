"""``SB3VecEnv``: a Gymnasium vector environment as a stable-baselines3 ``VecEnv``.

stable-baselines3 expects episodes to restart within the step that ends them, the last
observation of an ended episode in ``info["terminal_observation"]``, a time-limit end marked
``info["TimeLimit.truncated"]``, and one info dict per environment. A Gymnasium vector env
with same-step autoreset (``PopulationVectorEnv(..., autoreset_mode="same_step")``) already
restarts that way; this adapter translates its batched infos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from trainenv.vector.infos import unbatch_infos


class SB3VecEnv(VecEnv):
    """Step a Gymnasium vector env (same-step autoreset) through stable-baselines3's ``VecEnv``.

    Every sub-environment shares the wrapped env's attributes, so ``get_attr`` answers the
    wrapped env's attribute for each index; ``set_attr`` and ``env_method`` are refused (the
    sub-environments are not separate objects: act on :attr:`env` instead). Episode statistics
    for SB3's logger come from wrapping this adapter in ``VecMonitor``.

    Args:
        env: A vector env whose ``metadata["autoreset_mode"]`` is ``AutoresetMode.SAME_STEP``.
    """

    def __init__(self, env: VectorEnv) -> None:
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"env: needs same-step autoreset (metadata['autoreset_mode'] = "
                f"AutoresetMode.SAME_STEP, e.g. PopulationVectorEnv(..., "
                f"autoreset_mode='same_step')), got {mode!r}"
            )
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else self._seeds
        obs, infos = self.env.reset(seed=seeds)  # type: ignore[arg-type]  # a list per env
        self.reset_infos = unbatch_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_async(actions) must come before step_wait()")
        obs, rewards, terminations, truncations, batched = self.env.step(self._actions)
        self._actions = None
        infos = unbatch_infos(batched, self.num_envs)
        dones = terminations | truncations
        for i in np.flatnonzero(dones):
            # The step's info is the restarted episode's; SB3 wants the ended one's.
            self.reset_infos[i] = infos[i]
            ended = infos[i].pop("final_info")
            ended["terminal_observation"] = infos[i].pop("final_obs")
            ended["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
            infos[i] = ended
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.env, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(
            f"set_attr({attr_name!r}): the sub-environments are members of one vector env, "
            "not separate objects; set it on SB3VecEnv.env"
        )

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        raise AttributeError(
            f"env_method({method_name!r}): the sub-environments are members of one vector env, "
            "not separate objects; call it on SB3VecEnv.env"
        )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)
