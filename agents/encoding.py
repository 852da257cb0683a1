"""Turning ``{intervention: magnitude}`` into an action of a trainenv environment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trainenv import DiscreteMenu, TrainEnv


def unwrap(env: Any) -> TrainEnv:
    inner = getattr(env, "unwrapped", env)
    if not isinstance(inner, TrainEnv):
        raise TypeError(f"expected a trainenv environment, got {type(inner).__name__}")
    return inner


def encode(env: Any, magnitudes: Mapping[str, float], exact: bool = True) -> Any:
    """The action of ``env`` that applies each named intervention at its magnitude.

    Continuous action spaces take any in-range magnitudes, several at once. A discrete menu
    applies at most one intervention a step and only its menu levels: with ``exact=True`` the
    magnitude must be on the menu, otherwise the nearest level (in log space) is taken.
    """
    spec = unwrap(env).action_spec
    if isinstance(spec, DiscreteMenu) and not exact and len(magnitudes) == 1:
        ((name, magnitude),) = magnitudes.items()
        levels = [m for entry in spec.entries for n, m in entry.items() if n == name]
        if levels:
            magnitude = min(levels, key=lambda level: abs(math.log(level / magnitude)))
        magnitudes = {name: magnitude}
    return spec.encode(magnitudes)
