"""Populations as vector environments: gymnasium's vector API, autoreset, batch-invariance
through the env, per-member interventions, member forks, and the stable-baselines3 adapter."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import trainenv  # noqa: F401  (registers the environments)
from trainenv.core import interventions as registry
from trainenv.vector import PopulationVectorEnv, SB3VecEnv, unbatch_infos

FAST_PPO = {"algo_kwargs": {"n_steps": 8, "n_epochs": 2}}  # a quick variant of the recipe
ENVS = [
    pytest.param("trainenv/Digits-MLP-v0", {"k": 2}, id="digits"),
    pytest.param("trainenv/CartPole-PPO-v0", {"trainer_kwargs": FAST_PPO}, id="cartpole"),
]


def make_vec(num_envs: int, env_id: str = "trainenv/Digits-MLP-v0", **kwargs: Any):
    kwargs = {"k": 2, "max_steps": 3, **kwargs}
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    ).unwrapped


def member_info(infos: dict[str, Any], n: int, i: int) -> dict[str, Any]:
    return unbatch_infos(infos, n)[i]


def assert_same_info(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal infos, nested dicts too, NaN equal to NaN."""
    assert a.keys() == b.keys()
    for key, x in a.items():
        if isinstance(x, dict):
            assert_same_info(x, b[key])
        elif x is None or isinstance(x, str):
            assert x == b[key], key
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(b[key]), err_msg=key)


def assert_same_step(a: tuple, b: tuple, i: int, j: int, n_a: int, n_b: int) -> None:
    """Member ``i`` of step result ``a`` equals member ``j`` of ``b``, bit for bit."""
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x[i], y[j])
    assert_same_info(member_info(a[4], n_a, i), member_info(b[4], n_b, j))


# -- the vector API ------------------------------------------------------------------------------
@pytest.mark.parametrize(("env_id", "kwargs"), ENVS)
def test_make_vec_builds_the_population_with_the_single_env_spaces(env_id, kwargs) -> None:
    env = make_vec(3, env_id, max_steps=2, **kwargs)
    single = gym.make(env_id, max_steps=2)
    assert isinstance(env, PopulationVectorEnv) and env.num_envs == 3
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert env.single_observation_space == single.observation_space
    assert env.single_action_space == single.action_space
    obs, infos = env.reset(seed=0)
    assert obs.shape == (3, *single.observation_space.shape) and obs.dtype == np.float32
    assert obs in env.observation_space
    _, single_info = single.reset(seed=0)
    # The env's own keys; recipe-specific extras (trainer.info()) are the single-run trainer's.
    extras = set(single.unwrapped.trainer.info())
    assert set(member_info(infos, 3, 2)) == set(single_info) - extras
    assert infos["_p"].all() and infos["p"].shape == (3,)
    obs, rewards, terminated, truncated, infos = env.step(env.action_space.sample())
    assert obs in env.observation_space and np.isfinite(rewards).all()
    assert rewards.dtype == np.float64 and terminated.dtype == truncated.dtype == np.bool_
    assert rewards.shape == terminated.shape == truncated.shape == (3,)
    assert infos["updates"].tolist() == [env.settings.k] * 3
    assert {k for k in infos["knobs"] if k[0] != "_"} == {s.name for s in env.population.knob_specs}
    assert infos["knobs"]["_lr_scale"].all()


def test_tinylm_has_no_population_form_but_sync_vectorisation_works() -> None:
    with pytest.raises(gym.error.Error, match="vector entry point"):
        gym.make_vec("trainenv/TinyLM-v0", num_envs=2, vectorization_mode="vector_entry_point")
    spec = gym.spec("trainenv/TinyLM-v0")
    assert spec.vector_entry_point is None and spec.entry_point is not None


def test_bad_input_is_refused_before_any_member_moves() -> None:
    env = make_vec(2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=-1)
    with pytest.raises(ValueError, match="autoreset_mode"):
        make_vec(2, autoreset_mode="sometimes")
    env.reset(seed=0)
    updates = env.population.updates.copy()
    with pytest.raises(ValueError, match="one action per member"):
        env.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([0, 10_000]))
    with pytest.raises(ValueError, match="magnitude"):
        env.intervene([{}, {"lr_shock": 1e9}])
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.zeros(2, dtype=bool)})
    np.testing.assert_array_equal(env.population.updates, updates)


# -- autoreset -----------------------------------------------------------------------------------
def test_next_step_autoreset_restarts_only_the_ended_member() -> None:
    env, twin = make_vec(3, max_steps=2), make_vec(3, max_steps=2)
    noop = np.zeros(3, dtype=np.int64)
    for e in (env, twin):
        e.reset(seed=10)
        e.step(noop)
        # Member 1 restarts alone: from now on it is a step behind the others.
        e.reset(seed=[None, 20, None], options={"reset_mask": np.array([False, True, False])})
    _, _, terminated, truncated, _ = env.step(noop)
    assert truncated.tolist() == [True, False, True] and not terminated.any()
    obs, rewards, terminated, truncated, infos = env.step(noop)
    assert truncated.tolist() == [False, True, False]
    assert rewards[[0, 2]].tolist() == [0.0, 0.0] and (obs[[0, 2], -1] == 0.0).all()
    assert infos["updates"].tolist() == [0, 4, 0]  # 0 and 2 restarted, 1 ran its 2 steps
    assert env.population.seeds[1] == 20 and env.population.seeds[0] not in (10, 12)
    # The restarts draw their run seeds from the env's generator: seeded, reproducible.
    twin.step(noop), twin.step(noop)
    assert twin.population.seeds == env.population.seeds
    obs, _, _, truncated, infos = env.step(noop)
    assert infos["updates"].tolist() == [2, 0, 2] and not truncated.any()


def test_same_step_autoreset_reports_the_ended_episode_in_final_info() -> None:
    env = make_vec(2, max_steps=1, autoreset_mode="same_step")
    env.reset(seed=0)
    obs, _, _, truncated, infos = env.step(np.zeros(2, dtype=np.int64))
    assert truncated.all() and infos["_final_obs"].all()
    assert (obs[:, -1] == 0.0).all()  # the restarted episodes' first observations
    assert [o[-1] for o in infos["final_obs"]] == [1.0, 1.0]
    assert infos["final_info"]["updates"].tolist() == [2, 2] and infos["updates"].tolist() == [0, 0]


# -- members are runs ----------------------------------------------------------------------------
@pytest.mark.parametrize(("env_id", "kwargs"), ENVS)
def test_a_member_is_the_same_seed_in_a_population_of_one(env_id, kwargs) -> None:
    """Batch-invariance through the env: member 1 of 3 and the only member of a population of
    one, same seed and interventions, give the same observations, rewards and infos bit for
    bit, while the other members receive other interventions."""
    together = make_vec(3, env_id, max_steps=4, action_mode="continuous", **kwargs)
    alone = make_vec(1, env_id, max_steps=4, action_mode="continuous", **kwargs)
    (obs_a, info_a), (obs_b, info_b) = together.reset(seed=[4, 9, 2]), alone.reset(seed=[9])
    np.testing.assert_array_equal(obs_a[1], obs_b[0])
    assert_same_info(member_info(info_a, 3, 1), member_info(info_b, 1, 0))
    shock = {"lr_shock": 30.0}
    schedule = [({}, {}), (shock, {"weight_noise": 0.5}), ({}, shock), ({}, {})]
    for mine, others in schedule:
        a = together.intervene([others, mine, others])
        b = alone.intervene([mine])
        assert_same_step(a, b, 1, 0, 3, 1)


def test_interventions_act_on_their_member_only() -> None:
    shocked, plain = make_vec(3, max_steps=4), make_vec(3, max_steps=4)
    shocked.reset(seed=1), plain.reset(seed=1)
    magnitude = registry.get("lr_shock").high
    a = shocked.intervene([{}, {"lr_shock": magnitude}, {}])
    b = plain.intervene([{}, {}, {}])
    assert a[4]["knobs"]["lr_scale"].tolist() == [1.0, magnitude, 1.0]
    assert a[4]["applied"][1] == [("lr_shock", magnitude)] and a[4]["applied"][0] == []
    for member in (0, 2):
        assert_same_step(a, b, member, member, 3, 3)
    assert not np.array_equal(a[4]["telemetry"]["grad_norm"][1], b[4]["telemetry"]["grad_norm"][1])


def test_step_and_intervene_agree() -> None:
    by_action, by_name = make_vec(2), make_vec(2)
    by_action.reset(seed=3), by_name.reset(seed=3)
    spec = by_action.settings.action_spec
    wanted = [{}, {"lr_shock": registry.get("lr_shock").high}]
    a = by_action.step(np.array([spec.encode(w) for w in wanted]))
    b = by_name.intervene(wanted)
    for member in (0, 1):
        assert_same_step(a, b, member, member, 2, 2)


@pytest.mark.parametrize(("env_id", "kwargs"), ENVS)
def test_fork_member_continues_exactly_like_its_source(env_id, kwargs) -> None:
    env = make_vec(3, env_id, max_steps=8, checkpoint_every=1, **kwargs)
    env.reset(seed=[5, 6, 7])
    env.intervene([{"lr_shock": 30.0}, {}, {}])  # a knob schedule the fork must inherit
    env.intervene([{}, {}, {}])
    env.fork_member(0, 2)
    for step in [[{}, {}, {}], [{"rollback": 1.0}, {}, {"rollback": 1.0}], [{}, {}, {}]]:
        result = env.intervene(step)
        assert_same_step(result, result, 0, 2, 3, 3)
    assert env.population.seeds[2] == 5
    with pytest.raises(ValueError, match="dst"):
        env.fork_member(0, 3)


# -- stable-baselines3 -------------------------------------------------------------------------
def test_sb3_adapter_needs_same_step_autoreset() -> None:
    with pytest.raises(ValueError, match="same-step"):
        SB3VecEnv(make_vec(2))


def test_sb3_ppo_trains_a_controller_on_a_population() -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor

    torch.set_num_threads(1)
    n, max_steps, n_steps = 4, 4, 16
    adapter = SB3VecEnv(make_vec(n, k=1, max_steps=max_steps, autoreset_mode="same_step"))
    venv = VecCheckNan(VecMonitor(adapter), raise_exception=True)
    ends: list[dict[str, Any]] = []

    class Ends(BaseCallback):
        def _on_step(self) -> bool:
            ends.extend(i for d, i in zip(self.locals["dones"], self.locals["infos"]) if d)
            return True

    model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=32, n_epochs=2, seed=0,
                device="cpu")  # fmt: skip
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(2 * n * n_steps, callback=Ends())  # 128 env steps: two rollouts
    assert model.num_timesteps == 2 * n * n_steps
    # Every episode ends within its budget: a collapse (terminated) or the budget (truncated).
    lengths = [e["episode"]["l"] for e in ends]
    assert len(ends) >= n * (2 * n_steps // max_steps) and all(1 <= x <= max_steps for x in lengths)
    for end in ends:
        assert end["terminal_observation"] in adapter.observation_space
        assert end["TimeLimit.truncated"] == (end["collapse"] is None)
        assert end["TimeLimit.truncated"] == (end["episode"]["l"] == max_steps)
    # Episodes counted: their steps and those of the episodes under way are all the steps.
    under_way = venv.venv.episode_lengths  # VecMonitor's
    assert sum(lengths) + under_way.sum() == model.num_timesteps
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
