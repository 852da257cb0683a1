"""The range of an inner Gymnasium environment's episode return: what an SB3 run's performance
is normalised by.

In order: the caller's ``performance_range``; the documented bounds of a known task
(:data:`KNOWN_RETURN_RANGES`); else the spec's ``reward_threshold`` (the return Gymnasium
counts as solved) as the ceiling over the mean return of a seeded random policy as the floor.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

RANDOM_EPISODES = 5
"""Episodes of the uniformly random policy averaged into a derived floor (seeds 0-4)."""
RANDOM_EPISODE_CAP = 1000
"""Steps after which a random episode of an env without a time limit (no
``max_episode_steps``) is cut; its partial return counts."""

KNOWN_RETURN_RANGES: dict[str, tuple[float, float]] = {
    # +1 per step, the termination step included; time limits 200 (v0) and 500 (v1).
    "CartPole-v0": (0.0, 200.0),
    "CartPole-v1": (0.0, 500.0),
    # -1 per step short of the goal, 0 on reaching it; time limit 500.
    "Acrobot-v1": (-500.0, 0.0),
    # -1 per step; time limit 200. The ceiling is a bound, not a score: the quickest policies
    # take about 100 steps (Gymnasium counts -110 as solved).
    "MountainCar-v0": (-200.0, 0.0),
    # -0.1 * action^2 per step (action in [-1, 1]) and +100 on reaching the goal; time limit 999.
    "MountainCarContinuous-v0": (-99.9, 100.0),
    # Per step between -(pi^2 + 0.1 * 8^2 + 0.001 * 2^2) = -16.2736044 and 0; time limit 200.
    "Pendulum-v1": (-16.2736044 * 200, 0.0),
}
"""Bounds of the episode return of Gymnasium's classic-control tasks, from the reward and time
limit each task documents (the "Rewards" sections of ``gymnasium.envs.classic_control``, and
the registered ``max_episode_steps``). No policy leaves them, so normalised performance stays
in ``[0, 1]``. Box2D tasks document no bounds (LunarLander: -100 for a crash, +100 for a
landing, shaping in between, 200 counts as solved): they take the derived range."""


def performance_range_of(
    env_id: str, given: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The ``(floor, ceiling)`` of ``env_id``'s episode return: ``given`` if set, a known
    task's bounds, else derived (:func:`derived_range`); ``None`` where nothing can be derived.
    """
    if given is not None:
        return given
    if env_id in KNOWN_RETURN_RANGES:
        return KNOWN_RETURN_RANGES[env_id]
    return derived_range(env_id)


@functools.cache  # deterministic, and a few random episodes per trainer add up
def derived_range(env_id: str) -> tuple[float, float] | None:
    """``(random-policy mean return, spec.reward_threshold)``, or ``None`` when the spec has no
    threshold or a random policy already reaches it."""
    threshold = gym.spec(env_id).reward_threshold
    if threshold is None:
        return None
    floor = random_policy_return(env_id)
    return (floor, float(threshold)) if floor < threshold else None


def random_policy_return(env_id: str, episodes: int = RANDOM_EPISODES) -> float:
    """Mean return of uniformly random actions over ``episodes`` episodes, episode ``i``
    seeded with ``i`` (environment and action sampling): deterministic, and it draws from no
    global generator."""
    env = gym.make(env_id)
    cap = gym.spec(env_id).max_episode_steps or RANDOM_EPISODE_CAP
    returns = []
    for seed in range(episodes):
        env.reset(seed=seed)
        env.action_space.seed(seed)
        total, done, steps = 0.0, False, 0
        while not done and steps < cap:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done, steps = total + float(reward), terminated or truncated, steps + 1
        returns.append(total)
    env.close()
    return float(np.mean(returns))
