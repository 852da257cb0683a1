"""The PettingZoo perturber-vs-stabilizer game."""

from __future__ import annotations

import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

import trainenv  # noqa: F401
from trainenv.multiagent import PerturbStabilizeEnv

SMALL = {"k": 2, "max_steps": 12}


@pytest.mark.parametrize("per_dimension", [False, True])
def test_pettingzoo_api_and_seed_tests_pass(per_dimension: bool) -> None:
    parallel_api_test(PerturbStabilizeEnv(per_dimension=per_dimension, **SMALL), num_cycles=30)
    parallel_seed_test(lambda: PerturbStabilizeEnv(per_dimension=per_dimension, **SMALL))


def test_agents_menus_split_by_role_and_dimension() -> None:
    team = PerturbStabilizeEnv(per_dimension=True, **SMALL)
    assert team.possible_agents[0] == "perturber" and len(team.possible_agents) >= 2
    for agent, menu in team.menus.items():
        roles = {i.role.value for i in menu.interventions}
        assert roles == ({"perturbation"} if agent == "perturber" else {"stabilizer"})
        if agent != "perturber":
            assert {i.dimension.value for i in menu.interventions} == {agent.split("_", 1)[1]}


def test_rewards_are_zero_sum_and_the_budget_limits_the_perturber() -> None:
    env = PerturbStabilizeEnv(budget=2, perturbations=["lr_shock"], stabilizers=["grad_clip"],
                              **SMALL)  # fmt: skip
    env.reset(seed=0)
    shock = env.menus["perturber"].space.n - 1  # the largest shock
    budgets = []
    for _ in range(4):
        _, rewards, _, _, infos = env.step({"perturber": shock, "stabilizer": 0})
        assert rewards["perturber"] == -rewards["stabilizer"]
        budgets.append(infos["perturber"]["budget_left"])
        if not env.agents:
            break
    assert budgets[:2] == [1, 0] and all(b == 0 for b in budgets[2:])
    # the third shock was ignored: nothing applied that step
    if len(budgets) > 2:
        assert infos["stabilizer"]["applied"] == []


def test_both_sides_act_in_the_same_step() -> None:
    env = PerturbStabilizeEnv(perturbations=["lr_shock"], stabilizers=["grad_clip"], **SMALL)
    env.reset(seed=0)
    _, _, _, _, infos = env.step({"perturber": 1, "stabilizer": 1})
    assert {name for name, _ in infos["perturber"]["applied"]} == {"lr_shock", "grad_clip"}
    assert infos["perturber"]["knobs"]["grad_clip"] == pytest.approx(0.05)


def test_bad_arguments_and_actions_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="budget"):
        PerturbStabilizeEnv(budget=-1, **SMALL)
    with pytest.raises(ValueError, match="reward_noise"):
        PerturbStabilizeEnv(perturbations=["reward_noise"], **SMALL)
    env = PerturbStabilizeEnv(**SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="missing"):
        env.step({"perturber": 0})
    with pytest.raises(ValueError, match="integer"):
        env.step({"perturber": 1, "stabilizer": 10**6})
    assert env.step({"perturber": 0, "stabilizer": 0})[4]["perturber"]["budget_left"] == 5
