"""Optional acting on a live run: a user's policy applies trainenv's stabilizers through an
adapter.

The policy has the controller protocol of ``agents/`` — ``reset()`` and ``act(obs, info)`` —
and answers with ``{intervention: magnitude}``, or with an action of a trainenv environment's
action space when the :class:`Actor` is given that environment's ``action_spec`` (so a rule
from ``agents.rules`` or a controller learned in trainenv acts unchanged). ``obs`` is the
monitor's meta-state latent (``float32``, empty before there is one); ``info`` is shaped like
the environment's ``info``:

``telemetry``
    ``{channel: value}`` of the latest update;
``updates``
    updates so far;
``alarms``, ``alarm``
    this update's :class:`~trainenv.monitor.monitor.Alarm` s, and whether there is any;
``scores``, ``deviation``, ``self_deviation``
    the detectors' latest scores, the band deviation (``None`` without a band), the
    self-deviation score (``None`` before there is one);
``knobs``
    the stabilizers in force (``lr_backoff`` factor, ``grad_clip`` norm, ``inf`` = the
    recipe's own).

The stabilizers (:data:`STABILIZERS`) are the registry's, with its magnitude ranges:
``lr_backoff`` multiplies the learning rate for ``duration`` updates, ``grad_clip`` clips the
global gradient norm for ``duration`` updates, ``rollback`` restores the last good in-memory
checkpoint (weights and optimizer state; see :class:`Actor` for when one is good). Every action
is returned as an :class:`Action` for the adapter to log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trainenv.core import interventions
from trainenv.core.actions import ActionSpec
from trainenv.monitor.monitor import Alarm, StabilityMonitor

STABILIZERS = ("lr_backoff", "grad_clip", "rollback")
_KNOB_DEFAULTS = {"lr_backoff": 1.0, "grad_clip": math.inf}


class LiveRun(Protocol):
    """What an adapter offers the :class:`Actor` on the user's live run."""

    def set_knob(self, name: str, value: float) -> None:
        """Put ``lr_backoff`` (a factor on the learning rate) or ``grad_clip`` (a max global
        gradient norm; ``inf``: the recipe's own clipping) in force from the next update."""

    def snapshot(self) -> Any:
        """An in-memory copy of the weights and optimizer state."""

    def restore(self, snapshot: Any) -> None:
        """Load a copy made by :meth:`snapshot` (the copy stays usable)."""


class Policy(Protocol):
    """A controller: ``reset()``, and ``act(obs, info)`` -> ``{name: magnitude}`` or an action
    of the environment whose ``action_spec`` the :class:`Actor` was given."""

    def reset(self) -> None: ...

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Action:
    """One stabilizer the policy applied.

    Attributes:
        update: The update count after which it was applied (it acts from the next one).
        name: ``lr_backoff``, ``grad_clip`` or ``rollback``.
        magnitude: Its magnitude (the factor, the norm, 1 for rollback).
        alarms: The detectors alarming at that update (empty if the policy acted without).
        detail: For rollback, the update of the checkpoint restored (``None`` otherwise).
    """

    update: int
    name: str
    magnitude: float
    alarms: tuple[str, ...]
    detail: int | None = None


class Actor:
    """Consults the policy once per update and applies its stabilizers to the live run.

    Checkpoints: every ``checkpoint_every`` updates the actor takes a candidate snapshot; a
    candidate becomes the *good* checkpoint (the one rollback restores) once
    ``checkpoint_every`` further updates have passed without any alarm, and none came in the
    ``checkpoint_every`` updates before it either — so a checkpoint taken while a problem was
    brewing, before the detectors saw it, is not the one restored. The first good checkpoint
    is the run at the first update the actor sees.

    Args:
        policy: The controller (:class:`Policy`).
        action_spec: The action spec of the trainenv environment the policy was built for,
            to decode its actions; ``None`` when it answers with ``{name: magnitude}``.
        duration: Updates a knob stabilizer (``lr_backoff``, ``grad_clip``) stays in force.
        checkpoint_every: Updates between candidate checkpoints (and the quiet stretch that
            makes one good).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        action_spec: ActionSpec | None = None,
        duration: int = 20,
        checkpoint_every: int = 10,
    ) -> None:
        if not all(callable(getattr(policy, m, None)) for m in ("act", "reset")):
            raise ValueError("policy must have reset() and act(obs, info) methods")
        if duration < 1 or checkpoint_every < 1:
            raise ValueError(
                f"duration and checkpoint_every must be >= 1 update, got {duration}, "
                f"{checkpoint_every}"
            )
        self.policy, self.action_spec = policy, action_spec
        self.duration, self.checkpoint_every = int(duration), int(checkpoint_every)
        self.knobs = dict(_KNOB_DEFAULTS)
        self.actions: list[Action] = []
        self._until: dict[str, int] = {}
        self._good: tuple[int, Any] | None = None
        self._candidate: tuple[int, Any] | None = None
        self._last_alarm = -math.inf
        policy.reset()

    def step(
        self, run: LiveRun, monitor: StabilityMonitor, alarms: Sequence[Alarm],
        row: Mapping[str, float],
    ) -> list[Action]:  # fmt: skip
        """After update ``monitor.updates``: expire knobs, keep checkpoints, ask the policy,
        apply what it answers; the actions applied."""
        update = monitor.updates
        if alarms:
            self._last_alarm = update
        self._expire(run, update)
        self._checkpoint(run, update)
        info = {
            "telemetry": {k: float(v) for k, v in row.items()}, "updates": update,
            "alarms": list(alarms), "alarm": bool(alarms), "scores": dict(monitor.scores),
            "deviation": monitor.deviation,
            "self_deviation": monitor.scores.get("self-deviation"), "knobs": dict(self.knobs),
        }  # fmt: skip
        latent = monitor.latent
        obs = np.zeros(0, np.float32) if latent is None else latent.astype(np.float32)
        answer = self.policy.act(obs, info)
        magnitudes = self.action_spec.decode(answer) if self.action_spec else dict(answer)
        names = tuple(sorted({alarm.detector for alarm in alarms}))
        applied = [self._apply(run, update, n, m, names) for n, m in magnitudes.items()]
        self.actions += applied
        return applied

    def _apply(
        self, run: LiveRun, update: int, name: str, magnitude: float, alarms: tuple[str, ...]
    ) -> Action:
        if name not in STABILIZERS:
            raise ValueError(f"policy answered {name!r}; the live stabilizers are {STABILIZERS}")
        magnitude = interventions.get(name).validate_magnitude(magnitude)
        if name == "rollback":
            assert self._good is not None  # taken at the first update
            checkpoint_update, snapshot = self._good
            run.restore(snapshot)
            self._candidate = None  # taken after the good one: possibly damaged
            return Action(update, name, magnitude, alarms, checkpoint_update)
        self.knobs[name] = magnitude
        self._until[name] = update + self.duration
        run.set_knob(name, magnitude)
        return Action(update, name, magnitude, alarms)

    def _expire(self, run: LiveRun, update: int) -> None:
        for name, until in list(self._until.items()):
            if update >= until:
                del self._until[name]
                self.knobs[name] = _KNOB_DEFAULTS[name]
                run.set_knob(name, _KNOB_DEFAULTS[name])

    def _checkpoint(self, run: LiveRun, update: int) -> None:
        if self._good is None:
            self._good = (update, run.snapshot())
            return
        if update % self.checkpoint_every:
            return
        candidate = self._candidate  # taken checkpoint_every updates ago
        if candidate is not None and self._last_alarm < candidate[0] - self.checkpoint_every:
            self._good = candidate  # no alarm from a stretch before it until now
        self._candidate = (update, run.snapshot())
