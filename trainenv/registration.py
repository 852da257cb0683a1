"""Gymnasium registration of trainenv's environments.

Only specs are recorded (this module imports gymnasium alone), so ``import trainenv`` stays
light; ``gymnasium.make`` imports the factory in :mod:`trainenv.envs` when called.
"""

from __future__ import annotations

import gymnasium as gym

ENTRY_POINTS = {
    "trainenv/CartPole-PPO-v0": "trainenv.envs:make_cartpole_ppo",
    "trainenv/Digits-MLP-v0": "trainenv.envs:make_digits_mlp",
    "trainenv/TinyLM-v0": "trainenv.envs:make_tiny_lm",
}


def register_all() -> None:
    """Register every environment with Gymnasium (idempotent)."""
    for env_id, entry_point in ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point)
