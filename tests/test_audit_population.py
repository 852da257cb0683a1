"""The population backend: an audit's runs as members of populations, same store format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from trainenv.audit import population as audit_population
from trainenv.audit.plan import AuditPlan, Recipe, Stabilizer
from trainenv.audit.runner import plan_groups, run_audit
from trainenv.audit.store import ResultStore
from trainenv.findings.config import full_config, quick_config

from .test_audit_runner import tiny_plan

SCHEDULE = ["step", "applied", "updates"]
"""Step-table columns that the plan alone decides (the env's schedule), whatever the trainer."""


def sorted_steps(store: ResultStore) -> pd.DataFrame:
    return store.steps().sort_values(["run_id", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> ResultStore:
    return run_audit(
        tiny_plan(), tmp_path_factory.mktemp("population"), backend="population", progress=False
    )


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> ResultStore:
    return run_audit(tiny_plan(), tmp_path_factory.mktemp("serial"), progress=False)


def test_same_runs_columns_and_schedule_as_the_per_run_backend(
    population: ResultStore, serial: ResultStore
) -> None:
    """Same run ids and columns in both tables; the env-level logic (knob schedule, what
    was applied when, updates per step) is TrainEnv's, step for step."""
    runs, expected = population.runs(), serial.runs()
    assert sorted(runs["run_id"]) == sorted(expected["run_id"])
    assert list(runs.columns) == list(expected.columns)
    steps, expected_steps = sorted_steps(population), sorted_steps(serial)
    assert list(steps.columns) == list(expected_steps.columns)
    knobs = [c for c in steps.columns if c.startswith("knob.")]
    assert len(steps) == len(expected_steps) > 0
    pd.testing.assert_frame_equal(steps[SCHEDULE + knobs], expected_steps[SCHEDULE + knobs])
    shocked = steps[steps["applied"].str.startswith("lr_shock")]
    assert len(shocked) and (shocked["knob.lr_scale"] > 1).all()
    # the strongest shocks collapse under either implementation
    strong = runs[(runs["intervention"] == "lr_shock") & (runs["magnitude"] == 1000)]
    assert strong["collapsed"].all()
    assert steps["deviation"].notna().any()  # meta-state deviations are written per step


def test_a_group_gives_the_same_records_in_any_batch(
    population: ResultStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch-invariance at the audit level: each group alone in its batch (one population per
    group) writes exactly what the groups packed together wrote."""
    monkeypatch.setattr(audit_population, "MAX_MEMBERS", 1)
    assert len(audit_population.pack(plan_groups(tiny_plan()))) == 2
    alone = run_audit(tiny_plan(), tmp_path, backend="population", progress=False)
    runs = alone.runs().set_index("run_id").sort_index().drop(columns=["wall_s"])
    expected = population.runs().set_index("run_id").sort_index().drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(runs, expected)
    pd.testing.assert_frame_equal(sorted_steps(alone), sorted_steps(population))


def test_resumes_with_the_runs_left(population: ResultStore, tmp_path: Path) -> None:
    """An audit that stopped after seed 0 resumes with seed 1 only and ends as a clean run."""
    run_audit(tiny_plan(seeds=[0]), tmp_path, backend="population", progress=False)
    ran: list[str] = []
    resumed = run_audit(
        tiny_plan(), tmp_path, backend="population", progress=False,
        on_record=lambda record: ran.append(str(record.row["seed"])),
    )  # fmt: skip
    assert ran and set(ran) == {"1"}
    runs = resumed.runs().set_index("run_id").sort_index().drop(columns=["wall_s"])
    expected = population.runs().set_index("run_id").sort_index().drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(runs, expected)


def test_backend_choice() -> None:
    """``auto`` picks populations where every recipe has one; asking for them elsewhere is a
    clear error before any work."""
    assert tiny_plan(backend="auto").resolved_backend() == "population"
    assert tiny_plan().resolved_backend() == "serial"
    lm = AuditPlan.model_validate({
        "env": "trainenv/TinyLM-v0", "interventions": [{"name": "lr_shock", "magnitudes": [10]}],
        "onsets": [1], "horizon": 5, "seeds": 1,
    })  # fmt: skip
    assert lm.resolved_backend() == "process"
    with pytest.raises(ValueError, match="backend 'population' needs envs with a population"):
        lm.resolved_backend("population")


def test_pack_keeps_groups_whole_and_spreads_over_workers() -> None:
    groups = plan_groups(tiny_plan(seeds=[0, 1, 2, 3], onsets=[2, 3]))
    batches = audit_population.pack(groups, workers=2)
    assert sorted(id(g) for b in batches for g in b.groups) == sorted(id(g) for g in groups)
    assert len(batches) >= 2
    for batch in batches:
        assert len({(g.recipe.key().__repr__(), g.onset) for g in batch.groups}) == 1
        assert batch.n_members == sum(1 + len(g.perturbations) for g in batch.groups)


@pytest.mark.parametrize("config", [quick_config, full_config])
def test_findings_audits_run_as_populations_where_the_recipes_have_them(config) -> None:
    """Claims 1 and 2 audit Digits and CartPole as populations, every grid recipe (learning
    rates, batch sizes, PPO epochs) and stochasticity knob included; TinyLM, which has no
    population form, runs one group per task."""
    expected = {"trainenv/Digits-MLP-v0": "population", "trainenv/CartPole-PPO-v0": "population",
                "trainenv/TinyLM-v0": "process"}  # fmt: skip
    for paradigm in config().paradigms:
        if not {1, 2} & set(paradigm.claims):
            continue
        plan = paradigm.plan(workers=2)
        assert len(plan.recipes) > 2  # the grid, not only the registered recipe
        assert plan.resolved_backend() == expected[paradigm.env], paradigm.name


def test_a_recipe_whose_settings_the_population_does_not_take_runs_per_run() -> None:
    """auto's rule reads each recipe's settings, not only its env: a trainer keyword or a
    stabilizer the population does not take sends the plan to the per-run backend, and asking
    for populations names the recipe."""
    noisy = Recipe(env="trainenv/Digits-MLP-v0", env_kwargs={"trainer_kwargs": {"lr": 3e-3}},
                   stabilizers=(Stabilizer(name="grad_noise", magnitude=0.3),))  # fmt: skip
    ppo = Recipe(env="trainenv/CartPole-PPO-v0",
                 env_kwargs={"trainer_kwargs": {"algo_kwargs": {"n_epochs": 5}}})  # fmt: skip
    assert noisy.has_population() and ppo.has_population()
    a2c = Recipe(name="a2c", env="trainenv/CartPole-PPO-v0",
                 env_kwargs={"trainer_kwargs": {"algo": "A2C"}})  # fmt: skip
    assert not a2c.has_population()
    plan = AuditPlan(recipes=(ppo, a2c), interventions=tiny_plan().interventions,
                     onsets=(1,), horizon=5, seeds=(0,))  # fmt: skip
    assert plan.resolved_backend() == "process"
    with pytest.raises(ValueError, match=r"population form; recipes \['a2c'\]"):
        plan.resolved_backend("population")
