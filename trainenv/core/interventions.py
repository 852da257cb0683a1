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

# The built-in interventions, one row each (keyword fields; the registry keeps this order).
# fmt: off
_BUILT_INS: tuple[Intervention, ...] = (
    # optimization
    Intervention(name="lr_shock", dimension=_OPT, role=_P, low=2.0, high=1e4,
                 log_scale=True, knob="lr_scale", duration=5,
                 description="learning rate multiplied by the magnitude"),
    Intervention(name="optimizer_reset", dimension=_OPT, role=_P, low=0.1, high=1.0,
                 log_scale=False, event="optimizer_reset",
                 description=("optimizer moment estimates shrunk by the magnitude (1: state "
                              "cleared)")),
    Intervention(name="batch_shrink", dimension=_OPT, role=_P, low=2.0, high=64.0,
                 log_scale=True, knob="batch_shrink", duration=5,
                 description="batch size divided by the magnitude"),
    # data
    Intervention(name="input_noise", dimension=_DATA, role=_P, low=0.05, high=5.0,
                 log_scale=True, knob="input_noise", duration=5,
                 description=("Gaussian noise on inputs/observations, std in units of the input "
                              "std")),
    Intervention(name="input_shift", dimension=_DATA, role=_P, low=0.1, high=10.0,
                 log_scale=True, knob="input_shift", duration=5,
                 description=("distribution shift: constant offset on inputs/observations, in "
                              "input stds")),
    # parametric
    Intervention(name="weight_noise", dimension=_PAR, role=_P, low=0.01, high=3.0,
                 log_scale=True, event="weight_noise",
                 description=("Gaussian noise on every weight tensor, std relative to the "
                              "tensor's RMS")),
    Intervention(name="weight_rescale", dimension=_PAR, role=_P, low=1.5, high=100.0,
                 log_scale=True, event="weight_rescale",
                 description="every weight tensor multiplied by the magnitude"),
    Intervention(name="layer_reset", dimension=_PAR, role=_P, low=0.1, high=1.0,
                 log_scale=False, event="layer_reset",
                 description=("first linear layer moved this fraction of the way to a fresh "
                              "initialisation")),
    # learning signal
    Intervention(name="label_noise", dimension=_SIG, role=_P, low=0.05, high=1.0,
                 log_scale=True, knob="label_noise", duration=5,
                 description=("fraction of training labels (classes or target tokens) replaced "
                              "at random")),
    Intervention(name="reward_noise", dimension=_SIG, role=_P, low=0.1, high=30.0,
                 log_scale=True, knob="reward_noise", duration=5,
                 description=("Gaussian noise added to rewards the learner sees, std in reward "
                              "units")),
    Intervention(name="reward_scale", dimension=_SIG, role=_P, low=2.0, high=1e3,
                 log_scale=True, knob="reward_scale", duration=5,
                 description="rewards the learner sees multiplied by the magnitude"),
    Intervention(name="reward_flip", dimension=_SIG, role=_P, low=0.05, high=1.0,
                 log_scale=True, knob="reward_flip", duration=5,
                 description="fraction of rewards the learner sees with their sign flipped"),
    # stabilizers
    Intervention(name="grad_clip", dimension=_OPT, role=_S, low=0.05, high=5.0,
                 log_scale=True, knob="grad_clip", duration=5, cost=0.001,
                 description="global gradient norm clipped to the magnitude"),
    Intervention(name="lr_backoff", dimension=_OPT, role=_S, low=0.01, high=0.5,
                 log_scale=True, knob="lr_backoff", duration=5, cost=0.002,
                 description="learning rate multiplied by the magnitude"),
    Intervention(name="rollback", dimension=_OPT, role=_S, low=1.0, high=1.0,
                 log_scale=False, event=ROLLBACK_EVENT, cost=0.02,
                 description="run restored to its last good fork"),
    Intervention(name="entropy_bonus", dimension=_SIG, role=_S, low=1e-3, high=0.1,
                 log_scale=True, knob="ent_coef", duration=5, cost=0.001,
                 description=("controlled stochasticity: policy entropy coefficient set to the "
                              "magnitude")),
    Intervention(name="grad_noise", dimension=_OPT, role=_S, low=0.01, high=1.0,
                 log_scale=True, knob="grad_noise", duration=5, cost=0.001,
                 description=("controlled stochasticity: Gaussian gradient noise, std relative "
                              "to grad RMS")),
    # language-model training
    Intervention(name="warmup_restart", dimension=_OPT, role=_P, low=0.1, high=1.0,
                 log_scale=False, event="warmup_restart",
                 description=("learning-rate schedule rewound: its position multiplied by 1 - "
                              "magnitude (1: warmup restarts from the current update)")),
    Intervention(name="token_corruption", dimension=_DATA, role=_P, low=0.02, high=1.0,
                 log_scale=True, knob="token_corruption", duration=5,
                 description="fraction of input tokens replaced by uniformly random tokens"),
    Intervention(name="domain_shift", dimension=_DATA, role=_P, low=0.05, high=1.0,
                 log_scale=True, knob="domain_shift", duration=5,
                 description=("fraction of each batch's sequences drawn from a shifted text "
                              "source (Python source code by default)")),
    Intervention(name="sequence_shuffle", dimension=_DATA, role=_P, low=0.05, high=1.0,
                 log_scale=True, knob="sequence_shuffle", duration=5,
                 description=("fraction of each sequence's positions whose tokens are randomly "
                              "permuted")),
    Intervention(name="layer_rescale", dimension=_PAR, role=_P, low=1.5, high=100.0,
                 log_scale=True, event="layer_rescale",
                 description="every weight of one transformer block multiplied by the magnitude"),
    Intervention(name="block_reset", dimension=_PAR, role=_P, low=0.1, high=1.0,
                 log_scale=False, event="block_reset",
                 description=("one transformer block (attention and MLP) moved this fraction of "
                              "the way to a fresh initialisation")),
    Intervention(name="loss_scale", dimension=_SIG, role=_P, low=2.0, high=1e4,
                 log_scale=True, knob="loss_scale", duration=5,
                 description="training loss multiplied by the magnitude"),
    Intervention(name="dropout", dimension=_PAR, role=_S, low=0.02, high=0.5,
                 log_scale=True, knob="dropout", duration=5, cost=0.001,
                 description=("controlled stochasticity: dropout probability of the model set to "
                              "the magnitude")),
    Intervention(name="z_loss", dimension=_SIG, role=_S, low=1e-4, high=0.1,
                 log_scale=True, knob="z_loss", duration=5, cost=0.001,
                 description=("coefficient of a z-loss (mean squared log-partition of the "
                              "logits) added to the training loss")),
    Intervention(name="logit_softcap", dimension=_SIG, role=_S, low=5.0, high=50.0,
                 log_scale=True, knob="logit_softcap", duration=5, cost=0.001,
                 description="logits soft-capped to magnitude * tanh(logits / magnitude)"),
)
# fmt: on
for _intervention in _BUILT_INS:
    register(_intervention)
