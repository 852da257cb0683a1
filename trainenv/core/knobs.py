"""Knobs: live settings of a run that interventions change."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class KnobSpec:
    """A live setting of a run.

    Attributes:
        name: Knob name, unique within a trainer (``"lr_scale"``, ``"grad_clip"``...).
        default: The recipe's own value, restored when an intervention on the knob expires.
        low: Smallest allowed value.
        high: Largest allowed value (``math.inf`` allowed, e.g. "no clipping").
        description: What the knob does, with its unit.
    """

    name: str
    default: float
    low: float
    high: float
    description: str

    def validate(self, value: float) -> float:
        """Return ``value`` as a float, or raise ``ValueError`` naming the knob and its range."""
        value = float(value)
        if math.isnan(value) or not self.low <= value <= self.high:
            raise ValueError(
                f"knob {self.name!r} must be in [{self.low}, {self.high}], got {value}"
            )
        return value


# The knobs shared by every built-in trainer; trainers add their own.
LR_SCALE = KnobSpec("lr_scale", 1.0, 1e-6, 1e6, "multiplier on the recipe's learning rate")
LR_BACKOFF = KnobSpec("lr_backoff", 1.0, 1e-6, 1.0, "stabilizing multiplier on the learning rate")
GRAD_CLIP = KnobSpec(
    "grad_clip", math.inf, 1e-8, math.inf, "max global gradient L2 norm (inf: no clipping)"
)
BATCH_SHRINK = KnobSpec("batch_shrink", 1.0, 1.0, 1e6, "divisor on the recipe's batch size")
INPUT_NOISE = KnobSpec(
    "input_noise", 0.0, 0.0, 1e3, "std of Gaussian noise on inputs, in units of input std"
)
INPUT_SHIFT = KnobSpec(
    "input_shift", 0.0, 0.0, 1e3, "constant offset on inputs, in units of input std"
)
LABEL_NOISE = KnobSpec(
    "label_noise", 0.0, 0.0, 1.0, "fraction of labels (classes or target tokens) replaced at random"
)
