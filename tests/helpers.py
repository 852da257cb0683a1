"""Small shared helpers for the test-suite."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainenv.env import TrainEnv

OUTCOME_COLUMNS = [
    "kind",
    "intervention",
    "magnitude",
    "seed",
    "drawdown",
    "recovery_time",
    "collapsed",
    "area",
    "final_gap",
    "collapse_reason",
]
"""The columns of an audit's runs table that two runs of the same plan must agree on."""


def rollout(env: TrainEnv, actions: list[Any], seed: int | None = None) -> list[tuple]:
    """Step ``env`` through ``actions`` (resetting first if ``seed`` is given); return per step
    ``(obs, reward, terminated, truncated, telemetry row)``, stopping at episode end."""
    if seed is not None:
        env.reset(seed=seed)
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, truncated, tuple(info["telemetry"].values())))
        if terminated or truncated:
            break
    return out


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    """Bit-identical trajectories (NaN equal to NaN)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
