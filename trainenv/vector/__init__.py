"""Populations as vector environments: :class:`PopulationVectorEnv` (Gymnasium's
``VectorEnv``, sub-environment ``i`` = member ``i``) and :class:`SB3VecEnv` (any same-step
autoreset vector env as a stable-baselines3 ``VecEnv``).

``gymnasium.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point")`` builds a
``PopulationVectorEnv`` for the registered environments with a population form.
"""

from typing import Any

from trainenv.vector.infos import unbatch_infos
from trainenv.vector.population import MemberView, PopulationVectorEnv

__all__ = ["MemberView", "PopulationVectorEnv", "SB3VecEnv", "unbatch_infos"]


def __getattr__(name: str) -> Any:
    # Lazy: stable-baselines3 takes ~1-2 s to import and only the adapter needs it.
    if name == "SB3VecEnv":
        from trainenv.vector.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module 'trainenv.vector' has no attribute {name!r}")
