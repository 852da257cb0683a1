"""Controllers trained on populations: the adversarial population draws the runs and schedules
of the single-run adversary wrapper, and the training entry point trains PPO on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainenv  # noqa: F401  (registers the environments)
from agents.adversary import (
    BACKOFF_AND_ROLLBACK,
    CompoundMenu,
    PerturbationRange,
    ScheduleDistribution,
    make_adversarial_env,
)
from agents.population_adversary import make_adversarial_population
from agents.train_controller import ControllerConfig, load_policy, train_controller
from trainenv import unbatch_infos

ENV = "trainenv/Digits-MLP-v0"
SMALL = {"k": 2, "max_steps": 4, "observation": "telemetry"}
SHOCKS = ScheduleDistribution(
    perturbations=(PerturbationRange(name="lr_shock", low=30.0, high=3000.0),),
    shocks=(1, 2), onsets=(1, 2), min_gap=1,
)  # fmt: skip
STABILIZERS = ("grad_clip", "lr_backoff", "rollback")


def test_members_draw_the_runs_and_schedules_of_the_single_run_wrapper() -> None:
    population = make_adversarial_population(ENV, 2, SHOCKS, **SMALL)
    singles = [make_adversarial_env(ENV, SHOCKS, **SMALL) for _ in range(2)]
    _, infos = population.reset(seed=3)
    noop = np.zeros(2, dtype=np.int64)
    for episode in range(2):  # the first episodes, then the autoreset ones
        for i, single in enumerate(singles):
            _, info = single.reset(seed=3 + i if episode == 0 else None)
            assert infos["run_seed"][i] == info["run_seed"]
            assert infos["schedule_seed"][i] == info["schedule_seed"]
            assert population.schedules[i] == single.schedule
        for step in range(SMALL["max_steps"]):
            _, _, terminated, truncated, infos = population.step(noop)
            applied = unbatch_infos(infos, 2)
            for i, single in enumerate(singles):
                shocks = single.schedule.at(step)
                ended = terminated[i] or truncated[i]
                info = applied[i]["final_info"] if ended else applied[i]
                assert dict(info["applied"]) == shocks
        assert (terminated | truncated).all()  # both restarted within the step
    with pytest.raises(ValueError, match="action"):
        population.step(np.array([0, population.single_action_space.n]))


def test_bad_population_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="autoreset"):
        make_adversarial_population(ENV, 2, SHOCKS, autoreset_mode="next_step", **SMALL)
    late = SHOCKS.model_copy(update={"onsets": (1, 4)})
    with pytest.raises(ValueError, match="onsets"):
        make_adversarial_population(ENV, 2, late, **SMALL)


def test_train_controller_trains_on_a_population(tmp_path) -> None:
    torch.set_num_threads(1)
    config = ControllerConfig(env_id=ENV, env_kwargs=SMALL, distribution=SHOCKS)
    assert config.has_population()
    model = train_controller(
        config, 128, tmp_path, n_envs=4, seed=0, ppo_kwargs={"n_steps": 16, "batch_size": 32}
    )
    assert model.num_timesteps == 128 and model.n_envs == 4
    # SB3's episode buffer is filled by VecMonitor: 32 steps per member, 4-step episodes.
    assert len(model.ep_info_buffer) >= 4 * 32 // 4
    loaded = load_policy(tmp_path)
    assert loaded.observation_space == config.make_env().observation_space


def test_the_compound_action_backs_off_and_rolls_back_in_one_step() -> None:
    population = make_adversarial_population(
        ENV, 2, SHOCKS, agent_actions="compound", stabilizers=STABILIZERS, levels=2, **SMALL
    )
    menu = population.agent_spec
    assert (
        isinstance(menu, CompoundMenu) and menu.space.n == 1 + 2 + 2 + 1 + 1
    )  # rollback: one level
    compound = menu.space.n - 1
    assert menu.decode(compound) == BACKOFF_AND_ROLLBACK
    assert menu.encode(BACKOFF_AND_ROLLBACK) == compound
    assert menu.encode({"rollback": 1.0}) == menu.index("rollback") < compound
    population.reset(seed=0)
    _, _, _, _, infos = population.step(np.array([compound, 0]))
    members = unbatch_infos(infos, 2)
    applied = [dict(info["applied"]) for info in members]
    stabilizers = [{n: m for n, m in a.items() if n in STABILIZERS} for a in applied]
    assert stabilizers == [BACKOFF_AND_ROLLBACK, {}]  # member 1 untouched
    assert members[0]["knobs"]["lr_backoff"] == pytest.approx(0.01)  # in force after the step
    assert members[1]["knobs"]["lr_backoff"] == 1.0
    single = make_adversarial_env(ENV, SHOCKS, agent_actions="compound", **SMALL)
    plain = make_adversarial_env(ENV, SHOCKS, agent_actions="discrete", **SMALL)
    assert single.action_space.n == plain.action_space.n + 1  # all the run's stabilizers
    with pytest.raises(ValueError, match="compound menu needs"):
        make_adversarial_env(ENV, SHOCKS, agent_actions="compound",
                             stabilizers=("grad_clip", "lr_backoff"), **SMALL)  # fmt: skip


def test_the_cost_weight_shapes_the_reward_of_stabilizers() -> None:
    # The same members, seeds and actions; the reward differs by the extra weight on the
    # stabilizers' cost (rollback 0.02, lr_backoff 0.002 per application).
    rewards = []
    for weight in (1.0, 10.0):
        population = make_adversarial_population(
            ENV, 2, SHOCKS, agent_actions="compound", stabilizers=STABILIZERS,
            reward={"cost_weight": weight}, **SMALL,
        )  # fmt: skip
        population.reset(seed=0)
        rewards.append(population.step(np.array([population.single_action_space.n - 1, 0]))[1])
    assert rewards[1][0] == pytest.approx(rewards[0][0] - 9 * (0.02 + 0.002))
    assert rewards[1][1] == rewards[0][1]  # no stabilizer, no cost


def test_progress_observations_hold_p_and_best_p_on_both_forms(tmp_path) -> None:
    torch.set_num_threads(1)
    population = make_adversarial_population(ENV, 2, SHOCKS, progress=True, **SMALL)
    plain = make_adversarial_population(ENV, 2, SHOCKS, **SMALL)
    single = make_adversarial_env(ENV, SHOCKS, progress=True, **SMALL)
    assert population.single_observation_space == single.observation_space
    assert single.observation_space.shape == (plain.single_observation_space.shape[0] + 2,)
    obs, infos = population.reset(seed=3)
    raw, _ = plain.reset(seed=3)
    noop = np.zeros(2, dtype=np.int64)
    for _ in range(SMALL["max_steps"]):
        members = unbatch_infos(infos, 2)
        assert obs.shape == (2, single.observation_space.shape[0])
        np.testing.assert_array_equal(obs[:, :-2], raw)  # the plain observation, then p
        np.testing.assert_allclose(obs[:, -2:], [[m["p"], m["best_p"]] for m in members])
        obs, _, terminated, truncated, infos = population.step(noop)
        raw = plain.step(noop)[0]
    assert (terminated | truncated).all()  # restarted within the step: their p, best_p
    members = unbatch_infos(infos, 2)
    np.testing.assert_allclose(obs[:, -2:], [[m["p"], m["best_p"]] for m in members])
    final = unbatch_infos(infos, 2)[0]
    np.testing.assert_allclose(final["final_obs"][-2:], [final["final_info"]["p"],
                                                        final["final_info"]["best_p"]])  # fmt: skip
    obs, info = single.reset(seed=0)
    assert single.observation_space.contains(obs)
    np.testing.assert_allclose(obs[-2:], [info["p"], info["best_p"]])
    # A controller trained with progress observations saves and loads with them.
    config = ControllerConfig(env_id=ENV, env_kwargs=SMALL, distribution=SHOCKS, progress=True)
    train_controller(config, 32, tmp_path, n_envs=2, ppo_kwargs={"n_steps": 16, "batch_size": 16})
    assert load_policy(tmp_path).observation_space == single.observation_space
