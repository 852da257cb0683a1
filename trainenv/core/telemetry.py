"""Telemetry: named scalar channels recorded once per update of the inner run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

ChannelRole = Literal["dynamics", "performance", "knob"]
"""What a channel is to the run: ``"dynamics"``, a signal of how training goes (losses,
gradient and weight norms, entropies); ``"performance"``, a measure the collapse rule or the
run's score is computed from (validation accuracy or loss, episode return); ``"knob"``, a
setting an intervention sets directly (the learning rate in force)."""
ROLES: tuple[ChannelRole, ...] = get_args(ChannelRole)


@dataclass(frozen=True)
class ChannelSpec:
    """Declares one telemetry channel, in the manner of CompilerGym's observation specs.

    Attributes:
        name: Channel name, unique within a trainer (``"train_loss"``, ``"grad_norm"``...).
        description: What the channel measures, with its unit.
        diverges_if_nonfinite: A non-finite value means the run diverged (its update ends
            ``advance`` with ``diverged=True``). True for losses, gradient and weight norms;
            false for a value that is merely undefined at times (a ratio with a zero
            denominator).
        role: :data:`ChannelRole`. A detector that reads a performance channel reads the
            collapse criterion itself, and one that reads a knob channel reads the
            perturbation: neither "precedes collapse" in any useful sense, so a *leak-free*
            meta-state summarises the dynamics channels only (:func:`dynamics_channels`).
    """

    name: str
    description: str
    diverges_if_nonfinite: bool = True
    role: ChannelRole = "dynamics"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(
                f"role of channel {self.name!r} must be one of {ROLES}, got {self.role!r}"
            )


def dynamics_channels(channels: Iterable[ChannelSpec]) -> tuple[str, ...]:
    """Names of the channels whose role is ``"dynamics"``, in order: what a leak-free
    meta-state may read."""
    return tuple(c.name for c in channels if c.role == "dynamics")


@dataclass(frozen=True)
class Telemetry:
    """The telemetry of one ``advance(k)`` call.

    Attributes:
        values: Array of shape ``(n_updates, n_channels)``, one row per update in the order of
            the trainer's ``channels``. ``n_updates`` is ``k``, or fewer if the run diverged.
        diverged: The run went non-finite during the call: a channel declared
            ``diverges_if_nonfinite`` (loss, gradient or weight norm...) took a non-finite
            value, or the trainer saw non-finite numbers elsewhere.
    """

    values: np.ndarray
    diverged: bool = False

    def last(self) -> np.ndarray:
        """The most recent row, shape ``(n_channels,)``."""
        return self.values[-1]
