"""Turning ``{intervention: magnitude}`` into an action of a trainenv environment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trainenv.core.actions import ContinuousMagnitudes, DiscreteMenu
from trainenv.env import TrainEnv


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
    if isinstance(spec, ContinuousMagnitudes):
        return spec.encode(dict(magnitudes))
    assert isinstance(spec, DiscreteMenu)
    if len(magnitudes) > 1:
        raise ValueError(f"a discrete menu applies one intervention a step, got {dict(magnitudes)}")
    if not magnitudes:
        return 0
    ((name, magnitude),) = magnitudes.items()
    entries = [(i, e[1]) for i, e in enumerate(spec.menu) if e and e[0].name == name]
    if not entries:
        raise ValueError(
            f"{name!r} is not on the menu: {sorted({e[0].name for e in spec.menu if e})}"
        )
    index, level = min(entries, key=lambda e: abs(math.log(e[1] / magnitude)))
    if exact and abs(level - magnitude) > 1e-6 * magnitude:
        levels = [round(m, 6) for _, m in entries]
        raise ValueError(f"magnitude {magnitude} of {name!r} is not on the menu: {levels}")
    return index
