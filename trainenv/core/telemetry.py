"""Telemetry: named scalar channels recorded once per update of the inner run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChannelSpec:
    """Declares one telemetry channel, in the manner of CompilerGym's observation specs.

    Attributes:
        name: Channel name, unique within a trainer (``"train_loss"``, ``"grad_norm"``...).
        description: What the channel measures, with its unit.
        deterministic: Whether the value is a deterministic function of the run's state and
            seed (all built-in channels are, on CPU).
    """

    name: str
    description: str
    deterministic: bool = True


@dataclass(frozen=True)
class Telemetry:
    """The telemetry of one ``advance(k)`` call.

    Attributes:
        values: Array of shape ``(n_updates, n_channels)``, one row per update in the order of
            the trainer's ``channels``. ``n_updates`` is ``k``, or fewer if the run diverged.
        diverged: The run went non-finite (loss, gradients or weights) during the call.
    """

    values: np.ndarray
    diverged: bool = False

    def last(self) -> np.ndarray:
        """The most recent row, shape ``(n_channels,)``."""
        return self.values[-1]


def channel_names(channels: tuple[ChannelSpec, ...]) -> tuple[str, ...]:
    return tuple(c.name for c in channels)
