"""Controllers in agents/: each rule fires on a synthetic stream where it should, not elsewhere."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import trainenv  # noqa: F401
from agents import (
    BackoffOnLossSpike,
    ClipOnGradSpike,
    ForkSearch,
    NoOp,
    RollbackOnDrop,
    Schedule,
    encode,
)


@pytest.fixture(params=["discrete", "continuous"])
def env(request):
    return gym.make("trainenv/Digits-MLP-v0", k=2, max_steps=30, action_mode=request.param)


def infos(channel: str, values, **extra) -> list[dict]:
    return [{"updates": i + 1, "telemetry": {channel: v}, **extra} for i, v in enumerate(values)]


def decoded(env, action) -> dict[str, float]:
    return env.unwrapped.action_spec.decode(action)


def fired_at(controller, stream) -> list[int]:
    controller.reset()
    noop = encode(controller.env, {})
    return [t for t, info in enumerate(stream)
            if not np.array_equal(controller.act(None, info), noop)]  # fmt: skip


def steady(n: int, level: float = 1.0, seed: int = 0) -> np.ndarray:
    return level + 0.01 * np.random.default_rng(seed).standard_normal(n)


def test_clip_on_grad_spike(env) -> None:
    controller = ClipOnGradSpike(env, clip=0.5)
    values = steady(40)
    assert fired_at(controller, infos("grad_norm", values)) == []
    values[30] = 10.0
    assert fired_at(controller, infos("grad_norm", values)) == [30]
    controller.reset()
    info = infos("grad_norm", values)
    action = [controller.act(None, i) for i in info][30]
    assert decoded(env, action) == {"grad_clip": pytest.approx(0.5, rel=0.5)}


def test_backoff_on_loss_spike_watches_the_runs_loss_channel(env) -> None:
    controller = BackoffOnLossSpike(env, factor=0.1)
    assert controller.channel == "train_loss"
    values = steady(40)
    assert fired_at(controller, infos("train_loss", values)) == []
    values[20] = 3.0
    assert fired_at(controller, infos("train_loss", values)) == [20]
    with pytest.raises(ValueError, match="channel 'nope'"):
        BackoffOnLossSpike(env, channel="nope")


def test_rollback_on_drop_with_cooldown(env) -> None:
    controller = RollbackOnDrop(env, drop=0.3, cooldown=3)
    ps = [0.1, 0.5, 0.8, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5, 0.8]
    stream = [{"p": p, "best_p": max(ps[: t + 1])} for t, p in enumerate(ps)]
    assert fired_at(controller, stream) == [4, 8]
    healthy = [{"p": 0.7, "best_p": 0.8}] * 10  # within 30 % of the best: no rollback
    assert fired_at(controller, healthy) == []
    unarmed = [{"p": 0.0, "best_p": 0.15}] * 10  # never learned: nothing to roll back to
    assert fired_at(controller, unarmed) == []


def test_fork_search_chooses_the_candidate_whose_fork_does_best() -> None:
    env = gym.make("trainenv/Digits-MLP-v0", k=5, max_steps=30, action_mode="continuous")
    obs, info = env.reset(seed=0)
    for _ in range(4):
        obs, *_, info = env.step(encode(env, {}))
    before = env.unwrapped.trainer.updates
    controller = ForkSearch(env, candidates=[{"lr_shock": 1e4}, {}], interval=2, horizon=2)
    assert decoded(env, controller.act(obs, info)) == {}  # the shock loses its lookahead
    assert env.unwrapped.trainer.updates == before  # lookahead ran on forks only
    assert decoded(env, controller.act(obs, info)) == {}  # off-interval step: no-op


def test_schedule_and_noop_act_through_the_action_space(env) -> None:
    schedule = Schedule(env, {1: {"lr_shock": 1e4}})
    schedule.reset()
    actions = [schedule.act(None, {}) for _ in range(3)]
    assert [decoded(env, a) for a in actions] == [{}, {"lr_shock": pytest.approx(1e4)}, {}]
    assert decoded(env, NoOp(env).act(None, {})) == {}
    with pytest.raises(ValueError, match="not on the menu|is not in this action space|'nope'"):
        Schedule(env, {0: {"nope": 1.0}})


def test_discrete_menus_take_one_intervention_and_exact_levels() -> None:
    env = gym.make("trainenv/Digits-MLP-v0", k=2, max_steps=30)
    with pytest.raises(ValueError, match="one intervention a step"):
        encode(env, {"lr_shock": 1e4, "grad_clip": 0.5})
    with pytest.raises(ValueError, match="not on the menu"):
        encode(env, {"lr_shock": 3.0})
    assert decoded(env, encode(env, {"lr_shock": 3.0}, exact=False)) == {"lr_shock": 2.0}
