"""Action specs: how an agent's action maps onto interventions and magnitudes."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from trainenv.core.interventions import Intervention

Magnitudes = dict[str, float]  # intervention name -> magnitude, in the order applied


class ActionSpec(abc.ABC):
    """Declares an action space and maps actions to and from ``{name: magnitude}``.

    Decoding validates the action completely, so an invalid action raises ``ValueError``
    before the run is touched. ``encode`` is its inverse: the action that applies the given
    interventions at the given magnitudes.
    """

    space: spaces.Space[Any]

    def __init__(self, interventions: Sequence[Intervention]) -> None:
        self.interventions = tuple(interventions)
        self._by_name = {i.name: i for i in self.interventions}

    @abc.abstractmethod
    def decode(self, action: Any) -> Magnitudes:
        """The interventions ``action`` applies, by name, with their magnitudes."""

    @abc.abstractmethod
    def encode(self, magnitudes: Mapping[str, float]) -> Any:
        """The action that applies each named intervention at its magnitude (the rest off)."""

    def describe(self, action: Any) -> str:
        """A short human-readable form of ``action`` (``"lr_shock=100"``, ``"no-op"``)."""
        applied = self.decode(action)
        return "no-op" if not applied else ", ".join(f"{n}={m:.3g}" for n, m in applied.items())

    def intervention(self, name: str) -> Intervention:
        """The offered intervention called ``name`` (``ValueError`` listing the offer if none)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(
                f"intervention {name!r} is not on offer; offered: {list(self._by_name)}"
            ) from None


class DiscreteMenu(ActionSpec):
    """``Discrete(n)``: 0 is the no-op, then each intervention at each of its magnitude levels.

    ``entries[i]`` is what action ``i`` applies (``{}`` for the no-op); :meth:`index` finds an
    entry by name.

    Args:
        interventions: The interventions on the menu.
        levels: Magnitudes per intervention, spread over its range (log-scale where declared).
    """

    def __init__(self, interventions: Sequence[Intervention], levels: int = 3) -> None:
        super().__init__(interventions)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
        entries: list[Magnitudes] = [{}]
        entries += [{i.name: m} for i in self.interventions for m in i.levels(levels)]
        self.entries: tuple[Magnitudes, ...] = tuple(entries)
        self.space = spaces.Discrete(len(self.entries))

    def decode(self, action: Any) -> Magnitudes:
        index = _as_index(action)
        if not 0 <= index < len(self.entries):
            raise ValueError(
                f"action must be an integer in [0, {len(self.entries) - 1}], got {action!r}"
            )
        return dict(self.entries[index])

    def index(self, name: str, magnitude: float | None = None) -> int:
        """The action applying ``name`` at ``magnitude`` (one of its menu levels).

        ``magnitude`` may be omitted for an intervention with a single level (``rollback``).
        """
        levels = [m for entry in self.entries for n, m in entry.items() if n == name]
        if not levels:
            self.intervention(name)  # raises, listing the offer
        if magnitude is None:
            if len(levels) > 1:
                raise ValueError(
                    f"{name!r} has {len(levels)} levels on the menu: pass one of {levels}"
                )
            magnitude = levels[0]
        for position, entry in enumerate(self.entries):
            if name in entry and math.isclose(entry[name], magnitude, rel_tol=1e-9):
                return position
        raise ValueError(
            f"magnitude {magnitude} of {name!r} is not on the menu: its levels are {levels}"
        )

    def encode(self, magnitudes: Mapping[str, float]) -> int:
        """The menu index applying ``magnitudes``: ``{}`` is 0, else one entry of the menu."""
        if not magnitudes:
            return 0
        if len(magnitudes) > 1:
            raise ValueError(
                f"a discrete menu applies one intervention a step, got {sorted(magnitudes)}"
            )
        ((name, magnitude),) = magnitudes.items()
        return self.index(name, magnitude)


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

    def encode(self, magnitudes: Mapping[str, float]) -> np.ndarray:
        names = list(self._by_name)
        action = np.full(len(self.interventions), -1.0, np.float32)
        for name, magnitude in magnitudes.items():
            position = self.intervention(name).position(magnitude)
            # A component of exactly 0 means "off": nudge the range's low end just inside.
            action[names.index(name)] = max(position, 1e-7)
        return action

    def decode(self, action: Any) -> Magnitudes:
        # Validated as Box.contains would, but stricter on types: a string, boolean or complex
        # action is a caller's mistake that numpy would otherwise convert silently.
        values = np.asarray(action)
        if values.dtype.kind not in "iuf":
            raise ValueError(
                f"action must be a real-valued array of shape {self.space.shape}, "
                f"got dtype {values.dtype}"
            )
        values = values.astype(np.float64)
        if values.shape != self.space.shape:
            raise ValueError(f"action must have shape {self.space.shape}, got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"action must be finite, got {values.tolist()}")
        if (np.abs(values) > 1.0 + 1e-6).any():
            raise ValueError(f"action components must be in [-1, 1], got {values.tolist()}")
        return {
            i.name: i.magnitude(min(float(v), 1.0))
            for i, v in zip(self.interventions, values)
            if v > 0
        }


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
