"""The intervention registry: named changes to a run across the four stability dimensions.

An intervention either sets a *knob* of the run for ``duration`` steps (then the knob returns
to the recipe's default), or triggers a one-off *event* (weights perturbed, optimizer state
reset, rollback...). Which trainers support an intervention follows from the knobs and events
each trainer declares, so a user's own trainer gains every intervention whose knob it has.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


class Dimension(str, enum.Enum):
    """The four dimensions of training stability (StabilityBench)."""

    OPTIMIZATION = "optimization"
    DATA = "data"
    PARAMETRIC = "parametric"
    SIGNAL = "signal"


class Role(str, enum.Enum):
    PERTURBATION = "perturbation"
    STABILIZER = "stabilizer"


ROLLBACK_EVENT = "rollback"
"""Handled by the environment itself: restore the last good fork of the run."""


@dataclass(frozen=True)
class Intervention:
    """A named change to a run.

    Attributes:
        name: Registry key.
        dimension: Which stability dimension it probes or protects.
        role: Perturbation (a shock) or stabilizer (a remedy).
        low, high: Magnitude range, in the unit of ``description``. ``low == high`` means the
            intervention has a single magnitude (e.g. rollback).
        log_scale: Magnitudes are spread geometrically between ``low`` and ``high``.
        duration: Steps a knob stays set (events act once, ``duration == 1``).
        knob: The knob it sets, or ``None`` for an event.
        event: The trainer event it triggers, or ``None`` for a knob.
        cost: Intervention cost per step applied, subtracted from the reward.
        description: What it does and the unit of its magnitude.
    """

    name: str
    dimension: Dimension
    role: Role
    low: float
    high: float
    log_scale: bool
    description: str
    knob: str | None = None
    event: str | None = None
    duration: int = 1
    cost: float = 0.0

    def __post_init__(self) -> None:
        if (self.knob is None) == (self.event is None):
            raise ValueError(f"intervention {self.name!r}: set exactly one of knob and event")
        if not 0 < self.low <= self.high < math.inf:
            raise ValueError(f"intervention {self.name!r}: need 0 < low <= high < inf")
        if self.duration < 1:
            raise ValueError(f"intervention {self.name!r}: duration must be >= 1")

    @property
    def target(self) -> str:
        """The knob or event name this intervention acts through."""
        return self.knob if self.knob is not None else self.event  # type: ignore[return-value]

    def magnitude(self, u: float) -> float:
        """Map ``u`` in ``[0, 1]`` onto the magnitude range (geometric if ``log_scale``)."""
        if self.log_scale:
            return float(self.low * (self.high / self.low) ** u)
        return float(self.low + (self.high - self.low) * u)

    def position(self, magnitude: float) -> float:
        """The inverse of :meth:`magnitude`: where ``magnitude`` lies in ``[0, 1]``."""
        magnitude = self.validate_magnitude(magnitude)
        if self.low == self.high:
            return 1.0
        if self.log_scale:
            return math.log(magnitude / self.low) / math.log(self.high / self.low)
        return (magnitude - self.low) / (self.high - self.low)

    def levels(self, n: int) -> tuple[float, ...]:
        """``n`` magnitudes spread over the range (one if the range is a single point)."""
        if self.low == self.high:
            return (self.low,)
        return tuple(self.magnitude(u) for u in np.linspace(0.0, 1.0, n))

    def validate_magnitude(self, magnitude: float) -> float:
        magnitude = float(magnitude)
        if not self.low <= magnitude <= self.high:
            raise ValueError(
                f"magnitude of {self.name!r} must be in [{self.low}, {self.high}], got {magnitude}"
            )
        return magnitude


_REGISTRY: dict[str, Intervention] = {}


def register(intervention: Intervention) -> Intervention:
    """Add an intervention to the registry (names are unique)."""
    if intervention.name in _REGISTRY:
        raise ValueError(f"intervention {intervention.name!r} is already registered")
    _REGISTRY[intervention.name] = intervention
    return intervention


def get(name: str) -> Intervention:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown intervention {name!r}; registered: {sorted(_REGISTRY)}"
        ) from None


def get_perturbation(name: str) -> Intervention:
    """The registered perturbation ``name``; ``ValueError`` listing the perturbations if
    ``name`` is unknown or a stabilizer."""
    intervention = get(name)
    if intervention.role is not Role.PERTURBATION:
        allowed = [i.name for i in _REGISTRY.values() if i.role is Role.PERTURBATION]
        raise ValueError(f"{name!r} is not a perturbation; perturbations: {allowed}")
    return intervention


def all_interventions() -> tuple[Intervention, ...]:
    return tuple(_REGISTRY.values())


def supported(targets: Iterable[str]) -> tuple[Intervention, ...]:
    """The registered interventions whose knob or event is among ``targets``."""
    names = set(targets)
    return tuple(i for i in _REGISTRY.values() if i.target in names)


_P, _S = Role.PERTURBATION, Role.STABILIZER
_OPT, _DATA, _PAR, _SIG = (
    Dimension.OPTIMIZATION,
    Dimension.DATA,
    Dimension.PARAMETRIC,
    Dimension.SIGNAL,
)

for _i in (
    # optimization
    Intervention(
        "lr_shock",
        _OPT,
        _P,
        2.0,
        1e4,
        True,
        "learning rate multiplied by the magnitude",
        knob="lr_scale",
        duration=5,
    ),
    Intervention(
        "optimizer_reset",
        _OPT,
        _P,
        0.1,
        1.0,
        False,
        "optimizer moment estimates shrunk by the magnitude (1: state cleared)",
        event="optimizer_reset",
    ),
    Intervention(
        "batch_shrink",
        _OPT,
        _P,
        2.0,
        64.0,
        True,
        "batch size divided by the magnitude",
        knob="batch_shrink",
        duration=5,
    ),
    # data
    Intervention(
        "input_noise",
        _DATA,
        _P,
        0.05,
        5.0,
        True,
        "Gaussian noise on inputs/observations, std in units of the input std",
        knob="input_noise",
        duration=5,
    ),
    Intervention(
        "input_shift",
        _DATA,
        _P,
        0.1,
        10.0,
        True,
        "distribution shift: constant offset on inputs/observations, in input stds",
        knob="input_shift",
        duration=5,
    ),
    # parametric
    Intervention(
        "weight_noise",
        _PAR,
        _P,
        0.01,
        3.0,
        True,
        "Gaussian noise on every weight tensor, std relative to the tensor's RMS",
        event="weight_noise",
    ),
    Intervention(
        "weight_rescale",
        _PAR,
        _P,
        1.5,
        100.0,
        True,
        "every weight tensor multiplied by the magnitude",
        event="weight_rescale",
    ),
    Intervention(
        "layer_reset",
        _PAR,
        _P,
        0.1,
        1.0,
        False,
        "first linear layer moved this fraction of the way to a fresh initialisation",
        event="layer_reset",
    ),
    # learning signal
    Intervention(
        "label_noise",
        _SIG,
        _P,
        0.05,
        1.0,
        True,
        "fraction of training labels (classes or target tokens) replaced at random",
        knob="label_noise",
        duration=5,
    ),
    Intervention(
        "reward_noise",
        _SIG,
        _P,
        0.1,
        30.0,
        True,
        "Gaussian noise added to rewards the learner sees, std in reward units",
        knob="reward_noise",
        duration=5,
    ),
    Intervention(
        "reward_scale",
        _SIG,
        _P,
        2.0,
        1e3,
        True,
        "rewards the learner sees multiplied by the magnitude",
        knob="reward_scale",
        duration=5,
    ),
    Intervention(
        "reward_flip",
        _SIG,
        _P,
        0.05,
        1.0,
        True,
        "fraction of rewards the learner sees with their sign flipped",
        knob="reward_flip",
        duration=5,
    ),
    # stabilizers
    Intervention(
        "grad_clip",
        _OPT,
        _S,
        0.05,
        5.0,
        True,
        "global gradient norm clipped to the magnitude",
        knob="grad_clip",
        duration=5,
        cost=0.001,
    ),
    Intervention(
        "lr_backoff",
        _OPT,
        _S,
        0.01,
        0.5,
        True,
        "learning rate multiplied by the magnitude",
        knob="lr_backoff",
        duration=5,
        cost=0.002,
    ),
    Intervention(
        "rollback",
        _OPT,
        _S,
        1.0,
        1.0,
        False,
        "run restored to its last good fork",
        event=ROLLBACK_EVENT,
        cost=0.02,
    ),
    Intervention(
        "entropy_bonus",
        _SIG,
        _S,
        1e-3,
        0.1,
        True,
        "controlled stochasticity: policy entropy coefficient set to the magnitude",
        knob="ent_coef",
        duration=5,
        cost=0.001,
    ),
    Intervention(
        "grad_noise",
        _OPT,
        _S,
        0.01,
        1.0,
        True,
        "controlled stochasticity: Gaussian gradient noise, std relative to grad RMS",
        knob="grad_noise",
        duration=5,
        cost=0.001,
    ),
    # language-model training
    Intervention(
        "warmup_restart",
        _OPT,
        _P,
        0.1,
        1.0,
        False,
        "learning-rate schedule rewound: its position multiplied by 1 - magnitude "
        "(1: warmup restarts from the current update)",
        event="warmup_restart",
    ),
    Intervention(
        "token_corruption",
        _DATA,
        _P,
        0.02,
        1.0,
        True,
        "fraction of input tokens replaced by uniformly random tokens",
        knob="token_corruption",
        duration=5,
    ),
    Intervention(
        "domain_shift",
        _DATA,
        _P,
        0.05,
        1.0,
        True,
        "fraction of each batch's sequences drawn from a shifted text source "
        "(Python source code by default)",
        knob="domain_shift",
        duration=5,
    ),
    Intervention(
        "sequence_shuffle",
        _DATA,
        _P,
        0.05,
        1.0,
        True,
        "fraction of each sequence's positions whose tokens are randomly permuted",
        knob="sequence_shuffle",
        duration=5,
    ),
    Intervention(
        "layer_rescale",
        _PAR,
        _P,
        1.5,
        100.0,
        True,
        "every weight of one transformer block multiplied by the magnitude",
        event="layer_rescale",
    ),
    Intervention(
        "block_reset",
        _PAR,
        _P,
        0.1,
        1.0,
        False,
        "one transformer block (attention and MLP) moved this fraction of the way to "
        "a fresh initialisation",
        event="block_reset",
    ),
    Intervention(
        "loss_scale",
        _SIG,
        _P,
        2.0,
        1e4,
        True,
        "training loss multiplied by the magnitude",
        knob="loss_scale",
        duration=5,
    ),
    Intervention(
        "dropout",
        _PAR,
        _S,
        0.02,
        0.5,
        True,
        "controlled stochasticity: dropout probability of the model set to the magnitude",
        knob="dropout",
        duration=5,
        cost=0.001,
    ),
    Intervention(
        "z_loss",
        _SIG,
        _S,
        1e-4,
        0.1,
        True,
        "coefficient of a z-loss (mean squared log-partition of the logits) added to "
        "the training loss",
        knob="z_loss",
        duration=5,
        cost=0.001,
    ),
    Intervention(
        "logit_softcap",
        _SIG,
        _S,
        5.0,
        50.0,
        True,
        "logits soft-capped to magnitude * tanh(logits / magnitude)",
        knob="logit_softcap",
        duration=5,
        cost=0.001,
    ),
):
    register(_i)
