"""Action specs: how an agent's action maps onto interventions and magnitudes."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from trainenv.core.interventions import Intervention

Applied = tuple[Intervention, float]  # an intervention and its magnitude


class ActionSpec(abc.ABC):
    """Declares an action space and decodes actions into ``(intervention, magnitude)`` pairs.

    Decoding validates the action completely, so an invalid action raises ``ValueError``
    before the run is touched.
    """

    space: spaces.Space[Any]

    def __init__(self, interventions: Sequence[Intervention]) -> None:
        self.interventions = tuple(interventions)

    @abc.abstractmethod
    def decode(self, action: Any) -> list[Applied]: ...

    def describe(self, action: Any) -> str:
        """A short human-readable form of ``action`` (``"lr_shock=100"``, ``"no-op"``)."""
        applied = self.decode(action)
        return "no-op" if not applied else ", ".join(f"{i.name}={m:.3g}" for i, m in applied)


class DiscreteMenu(ActionSpec):
    """``Discrete(n)``: 0 is the no-op, then each intervention at each of its magnitude levels.

    Args:
        interventions: The interventions on the menu.
        levels: Magnitudes per intervention, spread over its range (log-scale where declared).
    """

    def __init__(self, interventions: Sequence[Intervention], levels: int = 3) -> None:
        super().__init__(interventions)
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.menu: list[Applied | None] = [None]
        self.menu += [(i, m) for i in self.interventions for m in i.levels(levels)]
        self.space = spaces.Discrete(len(self.menu))

    def decode(self, action: Any) -> list[Applied]:
        index = _as_index(action)
        if not 0 <= index < len(self.menu):
            raise ValueError(
                f"action must be an integer in [0, {len(self.menu) - 1}], got {action!r}"
            )
        entry = self.menu[index]
        return [] if entry is None else [entry]


class ContinuousMagnitudes(ActionSpec):
    """``Box(-1, 1, (n_interventions,))``: one component per intervention.

    A component ``v <= 0`` leaves its intervention off; ``v in (0, 1]`` applies it with
    magnitude ``low * (high / low) ** v`` (log-scale) or ``low + (high - low) * v``.
    """

    def __init__(self, interventions: Sequence[Intervention]) -> None:
        super().__init__(interventions)
        if not self.interventions:
            raise ValueError("continuous actions need at least one intervention")
        self.space = spaces.Box(-1.0, 1.0, (len(self.interventions),), np.float32)

    def encode(self, magnitudes: dict[str, float]) -> np.ndarray:
        """The action applying each named intervention at its magnitude (the rest off)."""
        names = [i.name for i in self.interventions]
        action = np.full(len(self.interventions), -1.0, np.float32)
        for name, magnitude in magnitudes.items():
            if name not in names:
                raise ValueError(f"intervention {name!r} is not in this action space: {names}")
            intervention = self.interventions[names.index(name)]
            # A component of exactly 0 means "off": nudge the range's low end just inside.
            action[names.index(name)] = max(intervention.position(magnitude), 1e-7)
        return action

    def decode(self, action: Any) -> list[Applied]:
        try:
            values = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"action must be an array of shape {self.space.shape}") from None
        if values.shape != self.space.shape:
            raise ValueError(f"action must have shape {self.space.shape}, got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"action must be finite, got {values.tolist()}")
        if (np.abs(values) > 1.0 + 1e-6).any():
            raise ValueError(f"action components must be in [-1, 1], got {values.tolist()}")
        return [
            (i, i.magnitude(min(float(v), 1.0)))
            for i, v in zip(self.interventions, values)
            if v > 0
        ]


def _as_index(action: Any) -> int:
    if isinstance(action, (bool, np.bool_)):
        raise ValueError(f"action must be an integer, got {action!r}")
    if isinstance(action, np.ndarray) and action.shape in ((), (1,)):
        action = action.reshape(()).item()
    if isinstance(action, (int, np.integer)):
        return int(action)
    if isinstance(action, (float, np.floating)) and math.isfinite(action) and action == int(action):
        return int(action)
    raise ValueError(f"action must be an integer, got {action!r}")
