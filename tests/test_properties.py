"""Property-based tests: random action sequences never break the env; invalid actions raise
``ValueError`` before touching the run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trainenv  # noqa: F401
from trainenv.env import TrainEnv

from .helpers import assert_same, rollout

SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def make(action_mode: str) -> TrainEnv:
    return gym.make("trainenv/Digits-MLP-v0", k=2, max_steps=8, action_mode=action_mode).unwrapped


DISCRETE = make("discrete")
CONTINUOUS = make("continuous")
N = CONTINUOUS.action_space.shape[0]
valid_vectors = st.lists(st.floats(-1.0, 1.0, width=32), min_size=N, max_size=N)


@SETTINGS
@given(
    st.lists(st.integers(0, DISCRETE.action_space.n - 1), min_size=1, max_size=8), st.integers(0, 3)
)
def test_random_discrete_actions_never_raise(actions: list[int], seed: int) -> None:
    for obs, reward, *_ in rollout(DISCRETE, actions, seed=seed):
        assert DISCRETE.observation_space.contains(obs) and np.isfinite(reward)


@SETTINGS
@given(st.lists(valid_vectors, min_size=1, max_size=8), st.integers(0, 3))
def test_random_continuous_actions_never_raise(actions: list[list[float]], seed: int) -> None:
    for obs, reward, *_ in rollout(CONTINUOUS, [np.float32(a) for a in actions], seed=seed):
        assert CONTINUOUS.observation_space.contains(obs) and np.isfinite(reward)


bad_component = st.one_of(
    st.just(np.nan), st.just(np.inf), st.just(-np.inf),
    st.floats(1.0001, 1e30), st.floats(-1e30, -1.0001),
)  # fmt: skip


@SETTINGS
@given(valid_vectors, st.integers(0, N - 1), bad_component)
def test_invalid_continuous_actions_raise_before_touching_the_run(
    vector: list[float], index: int, bad: float
) -> None:
    env = CONTINUOUS
    env.reset(seed=0)
    env.step(np.zeros(N, np.float32))
    twin, updates = env.fork(), env.trainer.updates
    action = np.array(vector, np.float64)
    action[index] = bad
    try:
        env.step(action)
    except ValueError:
        pass
    else:
        raise AssertionError(f"no ValueError for {action}")
    assert env.trainer.updates == updates
    noop = env.action_spec.encode({})
    assert_same(rollout(env, [noop, noop]), rollout(twin, [noop, noop]))


@SETTINGS
@given(
    st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=DISCRETE.action_space.n),
        st.floats(allow_nan=True).filter(lambda x: x != int(x) if np.isfinite(x) else True),
    )
)
def test_invalid_discrete_actions_raise_before_touching_the_run(bad: float) -> None:
    env = DISCRETE
    env.reset(seed=0)
    twin = env.fork()
    try:
        env.step(bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"no ValueError for {bad!r}")
    assert_same(rollout(env, [0, 0]), rollout(twin, [0, 0]))
