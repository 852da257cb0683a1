"""Recording one early-warning run: the per-run path, and each member of a population.

:func:`simulate_run` runs a :class:`~trainenv.warning.simulation.Task` through
``env.intervene`` in a :class:`~trainenv.env.TrainEnv`; a :class:`Recording` turns its steps
into a :class:`~trainenv.warning.simulation.Trace` (:mod:`~trainenv.warning.populations`
records each population member with it too), whose collapse onset :func:`collapse_onset`
finds (see :mod:`~trainenv.warning.simulation` for its definition).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainenv.core.collapse import CollapseRule, CollapseState
from trainenv.core.metastate import window_features
from trainenv.env import TrainEnv
from trainenv.warning.simulation import Task, Trace

__all__ = ["LOSS_CHANNELS", "Recording", "collapse_onset", "simulate_run"]

LOSS_CHANNELS = ("train_loss", "loss")  # the first a trainer has is "the loss"

_ENVS: dict[str, TrainEnv] = {}  # per process: building a trainer is slow, reset is complete


def _env(task: Task) -> TrainEnv:
    import gymnasium as gym

    import trainenv  # noqa: F401  (registers the environments)

    key = json.dumps([task.env, task.env_kwargs, task.interventions], sort_keys=True)
    if key not in _ENVS:
        env = gym.make(task.env, **task.env_kwargs, interventions=list(task.interventions))
        _ENVS[key] = env.unwrapped  # type: ignore[assignment]
    return _ENVS[key]


def simulate_run(task: Task) -> Trace:
    """Run one task through ``env.intervene`` and record its trace."""
    env = _env(task)
    _, info = env.reset(seed=task.seed)
    recording = Recording.start(task, env.encoder, env.trainer.channel_names, info["p"])
    for step in range(1, env.max_steps + 1):
        _, _, terminated, truncated, info = env.intervene(recording.ramped(step))
        recording.add(info, env.telemetry_window, terminated)
        if terminated or truncated:
            break
    return recording.trace(env.k, env.collapse_rule, tuple(c.role for c in env.trainer.channels))


@dataclass
class Recording:
    """A task's trace as its run goes (:func:`simulate_run`, or as a population's member):
    :meth:`start` after the reset, :meth:`add` after each step, :meth:`trace` at the end."""

    task: Task
    channels: tuple[str, ...]
    loss: str
    p0: float  # performance at reset
    rows: list[tuple[float, float, float, int]]  # p, loss, grad norm, updates per step
    features: list[np.ndarray]  # the window features per step
    reason: str | None = None  # the collapse reason, once the run collapsed

    @classmethod
    def start(
        cls, task: Task, encoder: object | None, channels: Sequence[str], p0: float
    ) -> Recording:
        """``ValueError`` if the env cannot be recorded: no encoder (whose window the
        features cover), no loss channel or no ``grad_norm``."""
        if encoder is None:
            raise ValueError(f"{task.env}: the early-warning evaluation needs the env's "
                             "encoder, whose window the features are computed over")  # fmt: skip
        loss = task.loss_channel or next((c for c in LOSS_CHANNELS if c in channels), None)
        if loss is None or loss not in channels or "grad_norm" not in channels:
            raise ValueError(f"{task.env}: needs a loss channel and grad_norm, has {channels}")
        return cls(task, tuple(channels), loss, float(p0), [], [])

    def ramped(self, step: int) -> dict[str, float]:
        """The ``{name: magnitude}`` to apply on step ``step`` (1-based): the ramp's, if on."""
        ramp = self.task.ramp
        magnitude = ramp.magnitude(step) if ramp else None
        return {} if ramp is None or magnitude is None else {ramp.intervention: magnitude}

    def add(self, info: Mapping[str, Any], window: np.ndarray, terminated: bool) -> None:
        """Record a step from its ``info`` and the telemetry window the env encodes after it."""
        telemetry = info["telemetry"]
        self.rows.append((info["p"], telemetry[self.loss], telemetry["grad_norm"],
                          info["updates"]))  # fmt: skip
        self.features.append(window_features(window))
        if terminated:
            self.reason = info["collapse"]

    def trace(self, k: int, rule: CollapseRule, roles: tuple[str, ...]) -> Trace:
        """The recorded run as a :class:`Trace` (``k`` updates per step, the env's collapse
        rule, each channel's role)."""
        values = np.asarray(self.rows, dtype=np.float64)
        task = self.task
        return Trace(
            paradigm=task.paradigm,
            seed=task.seed,
            scenario=task.scenario,
            k=k,
            p=values[:, 0],
            inputs={
                "loss": values[:, 1],
                "grad_norm": values[:, 2],
                "updates": values[:, 3].astype(np.int64),
                "features": np.asarray(self.features, dtype=np.float64),
            },
            collapse_onset=collapse_onset(values[:, 0], self.p0, rule, self.reason),
            ramp_onset=task.ramp.onset + 1 if task.ramp else None,
            channels=self.channels,
            roles=roles,
        )


def collapse_onset(p: np.ndarray, p0: float, rule: CollapseRule, reason: str | None) -> int | None:
    """The step (1-based) a collapse became observable, given the run's ``p`` per step, its
    ``p0`` at reset and the collapse reason of its last step (``None``: no collapse).

    For a performance collapse, the first step of the streak below the threshold that made
    the rule fire; for a non-finite one, the first step of the streak below the threshold
    still running when training went non-finite, else that last step.
    """
    if reason is None:
        return None
    state, start = CollapseState(best=p0), len(p)
    for t, value in enumerate(p, start=1):
        state, fired = rule.update(state, float(value), diverged=False)
        if state.below == 1:
            start = t
        if fired is not None:
            return start
    if reason == "non-finite":
        return start if state.below > 0 else len(p)
    raise ValueError("the collapse rule does not fire on these p values: wrong rule or p0?")
