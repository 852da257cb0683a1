"""TrainEnv on the supervised trainer: wrappers, collapse, knobs, rollback, configuration.

The contract every env meets (checkers, replay, forks, interleaving, pickling, invalid
actions) is in ``test_contract.py``."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import trainenv  # noqa: F401  (registers the environments)
from trainenv.core import interventions as registry
from trainenv.core.collapse import CollapseRule
from trainenv.core.reward import RewardSpec
from trainenv.env import TrainEnv
from trainenv.trainers.supervised import SupervisedTrainer

from .helpers import rollout


def digits(**kwargs) -> TrainEnv:
    kwargs = {"k": 5, "max_steps": 12, **kwargs}
    return gym.make("trainenv/Digits-MLP-v0", **kwargs).unwrapped


def test_make_through_gymnasium_applies_wrappers_and_runs() -> None:
    env = gym.make("trainenv/Digits-MLP-v0", max_steps=3)
    env.action_space.seed(0)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(info) >= {"performance", "p", "knobs", "telemetry", "collapse"}
    steps = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert isinstance(reward, float) and env.observation_space.contains(obs)
        if terminated or truncated:
            break
    # a rollback among the random actions rewinds the update count, so only a bound holds
    assert steps <= 3 and 0 < info["updates"] <= 3 * env.unwrapped.k


def lr_shock_action(env: TrainEnv) -> int:
    """The discrete action of the largest learning-rate shock on the menu."""
    return env.action_spec.index("lr_shock", registry.get("lr_shock").high)


def test_large_lr_shock_collapses_with_the_declared_penalty() -> None:
    penalty = 7.5
    env = digits(max_steps=40, reward=RewardSpec(collapse_penalty=penalty))
    env.reset(seed=0)
    for _ in range(8):  # let it learn first, so there is something to lose
        env.step(0)
    assert env.step(lr_shock_action(env))[4]["knobs"]["lr_scale"] == 1e4
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(0)
        assert np.isfinite(obs).all()
        if terminated:
            break
    assert terminated and info["collapse"] == "performance" and reward == -penalty


class _NanAfter30Updates(SupervisedTrainer):
    """A run whose performance becomes NaN (as a language model's loss can when it diverges)."""

    def evaluate(self) -> float:
        return math.nan if self.updates > 30 else super().evaluate()


def test_a_non_finite_performance_is_p_zero_so_rewards_and_curves_stay_finite() -> None:
    env = TrainEnv(_NanAfter30Updates(), k=5, max_steps=20, observation="telemetry")
    env.reset(seed=0)
    for _ in range(6):  # 30 updates of learning: the collapse rule arms
        assert math.isfinite(env.step(0)[4]["performance"])
    for _ in range(14):
        _, reward, terminated, _, info = env.step(0)
        assert math.isnan(info["performance"]) and info["p"] == 0.0 and math.isfinite(reward)
        if terminated:
            break
    assert info["collapse"] == "performance"  # p = 0 stays below the rule's threshold


def test_reward_and_collapse_accept_plain_mappings_validated_by_field() -> None:
    # JSON/YAML configs (controller.json, audit plans) spell them as mappings.
    env = digits(reward={"cost_weight": 5.0}, collapse={"patience": 3})
    assert env.reward_spec == RewardSpec(cost_weight=5.0)
    assert env.collapse_rule == CollapseRule(patience=3)
    with pytest.raises(ValueError, match="cost_weigh"):
        digits(reward={"cost_weigh": 5.0})
    with pytest.raises(ValueError, match="patience"):
        digits(collapse={"patience": 0})


def test_non_finite_training_is_a_collapse_not_an_exception() -> None:
    # A patient performance rule, so that only the non-finite path can end the episode.
    env = digits(max_steps=40, interventions=["weight_rescale"], levels=2,
                 collapse=CollapseRule(patience=1000))  # fmt: skip
    env.reset(seed=0)
    for _ in range(40):  # x100 every step: the weights overflow float32 within a few steps
        obs, reward, terminated, _, info = env.step(2)
        if terminated:
            break
    assert terminated and info["collapse"] == "non-finite"
    assert np.isfinite(obs).all() and env.observation_space.contains(obs)
    assert reward == -env.reward_spec.collapse_penalty
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_knob_interventions_last_their_duration_then_expire() -> None:
    env = digits()
    env.reset(seed=0)
    shock = lr_shock_action(env)
    duration = registry.get("lr_shock").duration
    for step in range(duration + 1):
        info = env.step(shock if step == 0 else 0)[4]
        in_force = step < duration
        assert info["knobs"]["lr_scale"] == (1e4 if in_force else 1.0)
        assert ("lr_shock" in info["active"]) == in_force


def test_unperturbed_digits_run_learns_without_collapsing() -> None:
    env = digits(max_steps=50)
    env.reset(seed=0)
    for _ in range(50):
        _, _, terminated, truncated, info = env.step(0)
        assert not terminated
    assert truncated and info["performance"] > 0.9


def test_rollback_restores_the_last_good_fork() -> None:
    env = digits(max_steps=30, checkpoint_every=4)
    noise = env.action_spec.index("weight_noise", registry.get("weight_noise").high)
    rollback = env.action_spec.index("rollback")
    rollout(env, [0] * 4, seed=2)  # the checkpoint is taken after step 4
    reference = rollout(env.fork(), [0])
    rollout(env, [noise])
    after_rollback = rollout(env, [rollback])
    assert after_rollback[0][4] == reference[0][4]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 0}, "k"),
        ({"max_steps": -1}, "max_steps"),
        ({"action_mode": "both"}, "action_mode"),
        ({"observation": "pixels"}, "observation"),
        ({"interventions": ["reward_noise"]}, "reward_noise"),
        ({"interventions": ["no_such_thing"]}, "no_such_thing"),
        ({"observation": "metastate", "encoder": None}, "encoder"),
    ],
)
def test_bad_config_is_a_clear_error_before_anything_runs(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainEnv(SupervisedTrainer(), **{"observation": "telemetry", **kwargs})


def test_collapse_and_reward_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="drop"):
        CollapseRule(drop=1.5)
    with pytest.raises(ValueError, match="collapse_penalty"):
        RewardSpec(collapse_penalty=-1)


def test_smoke_sb3_ppo_drives_the_registered_env_through_a_vec_env() -> None:
    """A smoke test, not a learning test: 256 steps teach PPO nothing measurable here. It checks
    that SB3's own tooling (make_vec_env, its Monitor wrapper, PPO.learn) runs the env: every
    episode ends within its budget and is reported with a finite return, and PPO updates."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    n_envs, max_steps, steps = 2, 20, 256
    vec = make_vec_env("trainenv/Digits-MLP-v0", n_envs=n_envs, seed=0,
                       env_kwargs={"k": 2, "max_steps": max_steps})  # fmt: skip
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=32, n_epochs=2, seed=0, verbose=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=steps)
    episodes = list(model.ep_info_buffer)
    assert len(episodes) >= n_envs * (steps // n_envs // max_steps)
    assert all(0 < e["l"] <= max_steps and math.isfinite(e["r"]) for e in episodes)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
