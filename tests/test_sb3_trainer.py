"""SB3Trainer: algorithms, determinism, forks, interventions, divergence, and CartPole-PPO-v0."""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger

import trainenv  # noqa: F401  (registers the environments)
from trainenv.core import interventions as registry
from trainenv.core.rng import derive_seed
from trainenv.env import TrainEnv
from trainenv.trainers.sb3 import SB3Trainer

TINY_NET = {"net_arch": [16, 16]}
TINY: dict[str, dict[str, Any]] = {
    "PPO": {"algo_kwargs": {"n_steps": 32, "batch_size": 16, "n_epochs": 2,
                            "policy_kwargs": TINY_NET}},
    "A2C": {"algo_kwargs": {"n_steps": 8, "policy_kwargs": TINY_NET}},
    "DQN": {"algo_kwargs": {"learning_starts": 0, "buffer_size": 500, "batch_size": 16,
                            "target_update_interval": 10, "policy_kwargs": TINY_NET},
            "steps_per_update": 16},
    "SAC": {"env_id": "Pendulum-v1", "performance_range": (-1700.0, 0.0),
            "algo_kwargs": {"learning_starts": 0, "buffer_size": 500, "batch_size": 16,
                            "policy_kwargs": TINY_NET},
            "steps_per_update": 8},
}  # fmt: skip


def tiny(algo: str = "PPO", seed: int | None = 0) -> SB3Trainer:
    trainer = SB3Trainer(algo, **TINY[algo])
    if seed is not None:
        trainer.reset(seed)
    return trainer


def cartpole(**kwargs: Any) -> TrainEnv:
    return gym.make("trainenv/CartPole-PPO-v0", **{"max_steps": 4, **kwargs}).unwrapped


@pytest.mark.parametrize("algo", list(TINY))
def test_each_algorithm_advances_with_finite_telemetry(algo: str) -> None:
    trainer = tiny(algo)
    telemetry = trainer.advance(3)
    names = list(trainer.channel_names)
    assert telemetry.values.shape == (3, len(names)) and not telemetry.diverged
    assert np.isfinite(telemetry.values).all()
    last = dict(zip(names, telemetry.last()))
    assert last["grad_norm"] > 0 and last["weight_norm"] > 0 and last["update_ratio"] > 0
    assert last["lr"] == pytest.approx(trainer.model.learning_rate)
    assert trainer.updates == 3 and trainer.model.num_timesteps == 3 * trainer.steps_per_update
    floor, ceiling = trainer.performance_range
    assert floor <= trainer.evaluate() <= ceiling


def test_unperturbed_run_matches_plain_sb3_bit_for_bit() -> None:
    """The trainer's own clipping hook, logger, lr wrapper and env view change nothing."""
    trainer = tiny(seed=5)
    trainer.advance(3)
    seed = derive_seed(5, "stable_baselines3")  # what the trainer hands SB3 for run seed 5
    plain = PPO("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", **TINY["PPO"]["algo_kwargs"])
    plain.set_logger(Logger(folder=None, output_formats=[]))  # no SB3-* folder in /tmp
    plain.learn(3 * trainer.steps_per_update)
    for ours, theirs in zip(trainer.model.policy.parameters(), plain.policy.parameters()):
        assert torch.equal(ours, theirs)


def test_channels_and_knobs_follow_the_algorithm() -> None:
    ppo, dqn, sac = (SB3Trainer(a, **TINY[a]) for a in ("PPO", "DQN", "SAC"))
    assert {"approx_kl", "clip_fraction", "explained_variance"} <= set(ppo.channel_names)
    assert dqn.channel_names[0] == "loss"
    assert {"actor_loss", "critic_loss", "ent_coef"} <= set(sac.channel_names)
    assert ppo.knobs["grad_clip"] == 0.5 and dqn.knobs["grad_clip"] == 10.0  # SB3 defaults
    assert sac.knobs["grad_clip"] == float("inf")
    assert "ent_coef" in ppo.knobs and "ent_coef" not in sac.knobs  # SAC's is "auto"
    assert "batch_shrink" not in SB3Trainer("A2C", **TINY["A2C"]).knobs  # no batch size


def test_same_seed_gives_bit_identical_telemetry_and_another_seed_differs() -> None:
    a, b, c = tiny(seed=7).advance(4), tiny(seed=7).advance(4), tiny(seed=8).advance(4)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize("algo", list(TINY))
def test_fork_and_snapshot_restore_reproduce_the_continuation(algo: str) -> None:
    trainer = tiny(algo, seed=3)
    trainer.advance(2)
    fork, snapshot = trainer.fork(), trainer.snapshot()
    original = trainer.advance(3).values
    np.testing.assert_array_equal(fork.advance(3).values, original)
    trainer.restore(snapshot)
    np.testing.assert_array_equal(trainer.advance(3).values, original)
    trainer.restore(snapshot)  # the snapshot stays valid
    np.testing.assert_array_equal(trainer.advance(3).values, original)


def test_two_trainers_advanced_alternately_match_each_alone() -> None:
    alone_a = tiny(seed=1).advance(4).values
    alone_b = tiny("DQN", seed=2).advance(4).values
    a, b = tiny(seed=1), tiny("DQN", seed=2)
    rows_a, rows_b = [], []
    for _ in range(4):
        rows_a.append(a.advance(1).values)
        torch.rand(3), np.random.rand(3)  # noqa: NPY002  (other work on the global generators)
        rows_b.append(b.advance(1).values)
    np.testing.assert_array_equal(np.concatenate(rows_a), alone_a)
    np.testing.assert_array_equal(np.concatenate(rows_b), alone_b)


def test_an_instance_restarts_from_its_weights_and_is_left_untouched() -> None:
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=16, n_epochs=1,
                policy_kwargs=TINY_NET, device="cpu", seed=0)  # fmt: skip
    weights = [p.detach().clone() for p in model.policy.parameters()]
    trainer = SB3Trainer(model)
    trainer.reset(1)
    assert all(torch.equal(p, w) for p, w in zip(trainer.model.policy.parameters(), weights))
    first = trainer.advance(2).values
    trainer.reset(1)
    np.testing.assert_array_equal(trainer.advance(2).values, first)
    trainer.reset(2)
    assert not np.array_equal(trainer.advance(2).values, first)
    assert all(torch.equal(p, w) for p, w in zip(model.policy.parameters(), weights))
    assert model.max_grad_norm == 0.5 and model.num_timesteps == 0


def test_no_log_folders_are_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3 would create SB3-*
    monkeypatch.chdir(tmp_path)
    tiny().advance(2)
    assert list(tmp_path.iterdir()) == []


# -- interventions ---------------------------------------------------------------------------
SUPPORTED = registry.supported(tiny(seed=None).targets)


def test_the_ppo_trainer_supports_all_four_dimensions_and_its_stabilizers() -> None:
    names = {i.name for i in SUPPORTED}
    assert {"lr_shock", "optimizer_reset", "batch_shrink", "input_noise", "input_shift",
            "weight_noise", "weight_rescale", "layer_reset", "reward_noise", "reward_scale",
            "reward_flip", "grad_clip", "lr_backoff", "entropy_bonus"} <= names  # fmt: skip
    assert "label_noise" not in names


@pytest.mark.parametrize("knob", ["reward_noise", "reward_scale", "reward_flip"])
def test_reward_perturbations_reach_the_learner_but_not_the_true_return(knob: str) -> None:
    trainer = tiny()
    trainer.advance(2)
    twin = trainer.fork()
    trainer.set_knob(knob, {"reward_noise": 10.0, "reward_scale": 100.0, "reward_flip": 1.0}[knob])
    names = list(trainer.channel_names)
    row = dict(zip(names, trainer.advance(1).last()))
    twin_row = dict(zip(names, twin.advance(1).last()))
    # The rollout precedes the update: same actions, so the same true episode returns.
    assert row["episode_return"] == twin_row["episode_return"]
    assert row["value_loss"] != twin_row["value_loss"]


# -- divergence ------------------------------------------------------------------------------
def test_non_finite_training_ends_the_episode_with_the_penalty() -> None:
    env = cartpole(observation="telemetry")
    env.reset(seed=0)
    env.trainer.apply_event("weight_rescale", 1e30)  # beyond any menu: outputs overflow
    obs, reward, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and info["collapse"] == "non-finite"
    assert reward == -env.reward_spec.collapse_penalty
    assert np.isfinite(obs).all() and env.observation_space.contains(obs)


def test_finite_weights_whose_outputs_overflow_count_as_divergence() -> None:
    trainer = tiny()
    with torch.no_grad():  # finite (float32 max ~3.4e38) but the logits overflow to inf
        trainer.model.policy.action_net.weight.fill_(3e38)
    telemetry = trainer.advance(3)
    assert telemetry.diverged and len(telemetry.values) == 1
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.policy.parameters())


def test_errors_that_are_not_divergence_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = tiny()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug, not a divergence")

    monkeypatch.setattr(trainer.model, "learn", broken)
    with pytest.raises(ValueError, match="a bug"):
        trainer.advance(1)


@pytest.mark.slow
def test_a_large_lr_shock_collapses_cartpole_ppo_without_an_exception() -> None:
    env = cartpole(max_steps=100, observation="telemetry", action_mode="continuous")
    env.reset(seed=0)
    for _ in range(30):  # learn first: the performance rule arms at p >= 0.2
        *_, terminated, _, info = env.step(env.action_spec.encode({}))
        assert not terminated
    assert info["best_p"] >= env.collapse_rule.arm_at
    shock = env.action_spec.encode({"lr_shock": registry.get("lr_shock").high})
    for _ in range(40):
        obs, reward, terminated, truncated, info = env.step(shock)
        if terminated or truncated:
            break
    assert terminated and info["collapse"] in ("performance", "non-finite")
    assert reward == -env.reward_spec.collapse_penalty and np.isfinite(obs).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algo": "PPO2"}, "algo must be one of"),
        ({"algo": 3}, "algo must be one of"),
        ({"algo_kwargs": {"n_stepz": 3}}, "unknown keys \\['n_stepz'\\]"),
        ({"algo_kwargs": {"seed": 3}}, "must not set \\['seed'\\]"),
        ({"env_id": "NoSuchEnv-v0"}, "env_id 'NoSuchEnv-v0'"),
        ({"env_id": "CliffWalking-v1"}, "performance_range is required for env_id 'Cliff"),
        ({"performance_range": (1.0, 1.0)}, "performance_range must be"),
        ({"perf_episodes": 0}, "perf_episodes must be an integer in \\[1, 100\\]"),
        ({"steps_per_update": 0}, "steps_per_update must be"),
        ({"obs_scale": (1.0, 2.0)}, "obs_scale must be one number or match"),
        ({"obs_scale": -1.0}, "obs_scale must be positive"),
    ],
)
def test_bad_configuration_raises_a_value_error_naming_the_field(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SB3Trainer(**kwargs)


# -- performance without a performance_range ----------------------------------------------------
def test_classic_control_tasks_need_no_performance_range() -> None:
    assert SB3Trainer("A2C", "Acrobot-v1").performance_range == (-500.0, 0.0)
    assert SB3Trainer("SAC", "Pendulum-v1").performance_range == pytest.approx((-3254.72, 0.0))
    assert SB3Trainer("PPO", "CartPole-v1", performance_range=(0, 10)).performance_range == (0, 10)


def test_a_task_with_a_reward_threshold_gets_a_random_policy_floor() -> None:
    from trainenv.trainers.sb3_returns import random_policy_return

    env_id = "ShortCartPole-v0"  # CartPole cut at 50 steps, solved at 45: in no table
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
                     max_episode_steps=50, reward_threshold=45.0)  # fmt: skip
    floor, ceiling = SB3Trainer("PPO", env_id).performance_range
    assert ceiling == 45.0
    assert 5.0 < floor < 45.0  # random CartPole episodes last about 20 steps
    assert random_policy_return(env_id) == floor  # seeded: the same every time


def test_an_update_without_a_finished_episode_warns_once_per_run() -> None:
    trainer = SB3Trainer("A2C", "Acrobot-v1", algo_kwargs={"n_steps": 16})
    trainer.reset(0)
    with pytest.warns(UserWarning, match=r"no episode of Acrobot-v1 has finished after 1 upd"):
        trainer.advance(1)
    assert trainer.evaluate() == -500.0
    assert trainer.info() == {"episodes": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.advance(2)  # still none finished: already said
    trainer.reset(1)
    with pytest.warns(UserWarning, match="performance is the floor -500 of performance_range"):
        trainer.advance(1)


def test_info_counts_the_episodes_in_performance() -> None:
    trainer = tiny("PPO")  # 32 CartPole steps an update: random episodes last ~20
    trainer.advance(3)
    episodes = trainer.info()["episodes"]
    assert 1 <= episodes <= trainer.perf_episodes


@pytest.mark.parametrize("shrink", [1.0, 4.0, 16.0])
def test_batch_shrink_keeps_the_optimizer_steps_and_shrinks_each_minibatch(
    shrink: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A perturbation changes the training signal, not the compute (issue 12, item 9)."""
    trainer = tiny()  # 32 samples a rollout, minibatches of 16, 2 epochs: 4 optimizer steps
    trainer.advance(1)
    policy = trainer.model.policy
    steps, sizes = [], []
    policy.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    evaluate = policy.evaluate_actions

    def spy(obs: torch.Tensor, actions: torch.Tensor) -> Any:
        sizes.append(len(obs))
        return evaluate(obs, actions)

    monkeypatch.setattr(policy, "evaluate_actions", spy)
    trainer.set_knob("batch_shrink", shrink)
    trainer.advance(1)
    assert len(steps) == 4 and sizes == [round(16 / shrink)] * 4
    trainer.reset_knob("batch_shrink")
    steps.clear(), sizes.clear()
    trainer.advance(1)
    assert len(steps) == 4 and sizes == [16] * 4  # the recipe's minibatches again
