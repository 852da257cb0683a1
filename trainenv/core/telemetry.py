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
        diverges_if_nonfinite: A non-finite value means the run diverged (its update ends
            ``advance`` with ``diverged=True``). True for losses, gradient and weight norms;
            false for a value that is merely undefined at times (a ratio with a zero
            denominator).
    """

    name: str
    description: str
    diverges_if_nonfinite: bool = True


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
