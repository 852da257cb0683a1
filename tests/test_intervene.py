"""Interventions by name: ``TrainEnv.intervene``, action encoding, and the episode's edges."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import trainenv  # noqa: F401  (registers the environments)
from trainenv.core import interventions as registry
from trainenv.core.actions import ContinuousMagnitudes, DiscreteMenu
from trainenv.env import TrainEnv

from .helpers import assert_same


def digits(**kwargs) -> TrainEnv:
    return gym.make("trainenv/Digits-MLP-v0", k=2, max_steps=6, **kwargs).unwrapped


# -- action specs ------------------------------------------------------------------------------
def test_discrete_menu_encodes_by_name_and_round_trips_every_entry() -> None:
    shock, rollback = registry.get("lr_shock"), registry.get("rollback")
    menu = DiscreteMenu([shock, rollback], levels=3)
    for index, entry in enumerate(menu.entries):
        assert menu.encode(entry) == index
        assert menu.decode(index) == entry
    assert menu.index("rollback") == len(menu.entries) - 1
    assert menu.index("lr_shock", shock.high) == 3
    with pytest.raises(ValueError, match="levels on the menu"):
        menu.index("lr_shock")  # three levels: the magnitude is needed
    with pytest.raises(ValueError, match="not on the menu"):
        menu.encode({"lr_shock": 3.0})
    with pytest.raises(ValueError, match="not on offer"):
        menu.index("weight_noise")
    with pytest.raises(ValueError, match="one intervention a step"):
        menu.encode({"lr_shock": 2.0, "rollback": 1.0})


@pytest.mark.parametrize(
    "bad",
    [["0.5"] * 2, np.ones(2, bool), np.array([0.5 + 0j, 0.1]), [True, False], [[0.5, 0.5]]],
    ids=["strings", "bool-array", "complex", "bools", "wrong-shape"],
)
def test_continuous_actions_are_validated_like_box_contains(bad) -> None:
    spec = ContinuousMagnitudes([registry.get("lr_shock"), registry.get("grad_clip")])
    with pytest.raises(ValueError, match="action"):
        spec.decode(bad)
    assert spec.decode(np.array([1, 0])) == {"lr_shock": pytest.approx(1e4)}  # ints are reals


# -- intervene ---------------------------------------------------------------------------------
def test_intervene_combines_interventions_a_discrete_menu_cannot() -> None:
    env = digits()
    env.reset(seed=0)
    info = env.intervene({"lr_shock": 100.0, "grad_clip": 0.5})[4]
    assert dict(info["applied"]) == {"lr_shock": 100.0, "grad_clip": 0.5}
    assert info["knobs"]["lr_scale"] == 100.0 and info["knobs"]["grad_clip"] == 0.5


@pytest.mark.parametrize(
    ("interventions", "match"),
    [
        ({"no_such": 1.0}, "not on offer"),
        ({"lr_shock": 1e9}, "magnitude of 'lr_shock' must be in"),
        ({"lr_shock": "100"}, "must be a number"),
        ({"lr_shock": True}, "must be a number"),
        ([("lr_shock", 100.0)], "mapping"),
    ],
)
def test_bad_interventions_raise_before_the_run_is_touched(interventions, match) -> None:
    env = digits()
    env.reset(seed=0)
    before = env.trainer.snapshot()
    updates = env.trainer.updates
    with pytest.raises(ValueError, match=match):
        env.intervene(interventions)
    assert env.trainer.updates == updates
    twin = env.fork()
    twin.trainer.restore(before)
    assert_same([env.intervene({})], [twin.intervene({})])


def test_only_offered_interventions_are_accepted() -> None:
    env = digits(interventions=["lr_shock"])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="offered: \\['lr_shock'\\]"):
        env.intervene({"grad_clip": 0.5})


# -- episode edges -----------------------------------------------------------------------------
def test_step_after_truncation_raises_like_step_after_termination() -> None:
    env = digits()
    env.reset(seed=0)
    for _ in range(env.max_steps):
        obs, _, terminated, truncated, _ = env.step(0)
        assert env.observation_space.contains(obs)
    assert truncated and not terminated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.intervene({})


def test_a_failed_reset_leaves_the_env_as_it_was() -> None:
    env = digits()
    env.reset(seed=1)
    env.step(0)
    twin = env.fork()
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            env.reset(seed=bad)
    assert_same([env.step(0)], [twin.step(0)])
