"""A user's own runs: a trainer whose ``evaluate()`` leaves its declared range is told so."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from trainenv.core.telemetry import ChannelSpec, Telemetry
from trainenv.env import TrainEnv
from trainenv.trainers import Trainer, TrainerSpec


class Placeholder(Trainer):
    """A run whose performance is whatever ``value`` says (a user's unfinished trainer)."""

    def __init__(self, value: float) -> None:
        self.value = value
        super().__init__()

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(channels=(ChannelSpec("loss", "a number"),), performance_range=(0, 1))

    def _reset(self, seed: int) -> None:
        pass

    def _advance(self, k: int) -> Telemetry:
        return Telemetry(np.ones((k, 1)))

    def evaluate(self) -> float:
        return self.value

    def _apply_event(self, name: str, magnitude: float) -> None:
        pass

    def _state(self) -> None:
        return None

    def _load_state(self, state: None) -> None:
        pass


def test_a_performance_outside_the_range_warns_once_per_run_naming_trainer_value_and_range() -> (
    None
):
    env = TrainEnv(Placeholder(0.5), k=1, max_steps=5, observation="telemetry")
    env.reset(seed=0)
    env.trainer.value = -1e9  # type: ignore[attr-defined]
    message = r"Placeholder.evaluate\(\) returned -1e\+09 after 1 updates, outside its " + (
        r"performance_range \(0, 1\)"
    )
    with pytest.warns(UserWarning, match=message):
        env.step(env.action_spec.encode({}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(env.action_spec.encode({}))  # the same run: said already
    with pytest.warns(UserWarning, match="returned -1e\\+09 after 0 updates"):
        env.reset(seed=1)  # a new run is told again


@pytest.mark.parametrize("value", [0.0, 1.0, -0.49, 1.49, math.nan, -math.inf])
def test_values_within_the_range_or_its_tolerance_or_non_finite_do_not_warn(value: float) -> None:
    trainer = Placeholder(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.reset(0)
        trainer.advance(2)


@pytest.mark.parametrize("value", [-0.51, 1.51, 5.0])
def test_a_trainer_just_past_the_tolerance_warns(value: float) -> None:
    with pytest.warns(UserWarning, match="outside its performance_range"):
        Placeholder(value).reset(0)
