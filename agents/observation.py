"""What a controller observes beyond the env's observation: the run's progress.

A telemetry observation holds the latest telemetry row only, so a drop of performance from its
best (what :class:`~agents.rules.RollbackOnDrop` reacts to) is invisible to a learned
controller; :func:`progress_observation` appends ``p`` and ``best_p`` from ``info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

PROGRESS_BOUNDS = (-1.0, 2.0)
"""Bounds of the progress entries (``p``, ``best_p``) of :func:`progress_observation`."""


def progress_observation(obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
    """``obs`` with the run's normalised performance ``info["p"]`` and its best so far
    ``info["best_p"]`` appended (clipped to :data:`PROGRESS_BOUNDS`), shape ``(D + 2,)``.

    What :class:`~agents.rules.RollbackOnDrop` reads and a telemetry observation (the latest
    row only) lacks: a drop from the best is invisible without the best.
    """
    progress = np.clip([info["p"], info["best_p"]], *PROGRESS_BOUNDS)
    return np.append(np.asarray(obs, dtype=np.float32), progress).astype(np.float32)


def progress_space(space: gym.spaces.Space) -> gym.spaces.Box:
    """``space`` (a ``Box`` of shape ``(D,)``) with the two entries of
    :func:`progress_observation`."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"progress: needs a flat Box observation space, got {space}")
    low, high = PROGRESS_BOUNDS
    return gym.spaces.Box(
        np.append(space.low, [low, low]).astype(np.float32),
        np.append(space.high, [high, high]).astype(np.float32),
        dtype=np.float32,
    )
