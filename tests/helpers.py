"""Small shared helpers for the test-suite."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainenv.core.interventions import Intervention
from trainenv.env import TrainEnv

OUTCOME_COLUMNS = [
    "kind",
    "intervention",
    "magnitude",
    "seed",
    "drawdown",
    "recovery_time",
    "collapsed",
    "area",
    "final_gap",
    "collapse_reason",
]
"""The columns of an audit's runs table that two runs of the same plan must agree on."""


def rollout(env: TrainEnv, actions: list[Any], seed: int | None = None) -> list[tuple]:
    """Step ``env`` through ``actions`` (resetting first if ``seed`` is given); return per step
    ``(obs, reward, terminated, truncated, telemetry row)``, stopping at episode end."""
    if seed is not None:
        env.reset(seed=seed)
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, truncated, tuple(info["telemetry"].values())))
        if terminated or truncated:
            break
    return out


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    """Bit-identical trajectories (NaN equal to NaN)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def strongest(intervention: Intervention) -> float:
    """Stabilizers that bite hardest at their low end; everything else at the high end."""
    low_end = ("grad_clip", "lr_backoff", "logit_softcap")
    return intervention.low if intervention.name in low_end else intervention.high


def assert_changes_the_run(env: TrainEnv, intervention: Intervention, warmup: int = 3) -> None:
    """The contract every intervention meets on every trainer: after ``warmup`` plain steps of
    the reset ``env`` (continuous actions, telemetry observations), applying ``intervention``
    at its :func:`strongest` magnitude is reported in ``info`` (applied, and its knob set while
    the knob on the trainer matches) and changes the telemetry against a fork stepped without
    it, whose knob stays at its default."""
    for _ in range(warmup):
        env.step(env.action_spec.encode({}))
    twin = env.fork()
    magnitude = strongest(intervention)
    info = env.step(env.action_spec.encode({intervention.name: magnitude}))[4]
    twin_info = twin.step(env.action_spec.encode({}))[4]
    assert info["applied"] == [(intervention.name, pytest.approx(magnitude, rel=1e-4))]
    if intervention.knob:
        assert info["knobs"][intervention.knob] == pytest.approx(magnitude, rel=1e-4)
        assert env.trainer.knobs[intervention.knob] == info["knobs"][intervention.knob]
        default = env.trainer.knob_spec(intervention.knob).default
        assert twin_info["knobs"][intervention.knob] == default
    assert info["telemetry"] != twin_info["telemetry"]
