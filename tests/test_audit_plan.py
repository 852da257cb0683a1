"""Audit plans: validation errors name the field and the allowed values, before any run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from trainenv.audit.plan import AuditPlan, default_plan

EXAMPLE = Path(__file__).parents[1] / "examples" / "plans" / "digits_quick.yaml"


def plan(**overrides: Any) -> dict[str, Any]:
    return {
        "env": "trainenv/Digits-MLP-v0",
        "interventions": [{"name": "lr_shock", "magnitudes": [10, 100]}],
        "onsets": [3],
        "horizon": 5,
        "seeds": 2,
        **overrides,
    }


def test_shorthand_makes_one_recipe_and_seed_count_a_range() -> None:
    p = AuditPlan.model_validate(plan(stabilizers=[{"name": "grad_clip", "magnitude": 1.0}]))
    assert len(p.recipes) == 1 and p.recipes[0].name == "Digits-MLP-v0+grad_clip=1"
    assert p.seeds == (0, 1)
    assert p.n_runs == 1 * 2 * 1 * (1 + 2)
    assert AuditPlan.model_validate(p.model_dump()) == p


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        (
            {"interventions": [{"name": "lr_shok", "magnitudes": [10]}]},
            "interventions.0.name",
            "lr_shock",
        ),
        (
            {"interventions": [{"name": "lr_shock", "magnitudes": [1.0]}]},
            "interventions.0",
            "[2.0, 10000.0]",
        ),
        (
            {"interventions": [{"name": "lr_shock", "magnitudes": [100, 10]}]},
            "interventions.0",
            "increasing",
        ),
        (
            {"interventions": [{"name": "grad_clip", "magnitudes": [1]}]},
            "interventions.0.name",
            "perturbations: ['lr_shock'",
        ),
        (
            {"interventions": [{"name": "lr_shock", "magnitudes": [10], "duration": 2}]},
            "interventions.0",
            ">= 5",
        ),
        (
            {"interventions": [{"name": "lr_shock", "magnitudes": []}]},
            "interventions.0.magnitudes",
            "at least 1",
        ),
        (
            {"stabilizers": [{"name": "rollback", "magnitude": 1.0}]},
            "recipes.0.stabilizers.0.name",
            "knob stabilizers: ['grad_clip'",
        ),
        (
            {"stabilizers": [{"name": "grad_clip", "magnitude": 50.0}]},
            "recipes.0.stabilizers.0",
            "[0.05, 5.0]",
        ),
        ({"env": "trainenv/Nope-v0"}, "recipes.0.env", "trainenv/Digits-MLP-v0"),
        ({"env_kwargs": {"action_mode": "discrete"}}, "recipes.0.env_kwargs", "action_mode"),
        ({"onsets": [3, 3]}, "onsets", "distinct integers >= 0"),
        ({"seeds": [-1]}, "seeds", ">= 0"),
        ({"horizon": 0}, "horizon", "greater than or equal to 1"),
        ({"backend": "slurm"}, "backend", "'serial', 'process' or 'ray'"),
        ({"tolerance": 2.0}, "tolerance", "less than or equal to 1"),
        ({"horizon": 5, "extra": 1}, "extra", "Extra inputs are not permitted"),
        (
            {"horizon": 4},
            "interventions[0] (lr_shock)",
            "window of 5 steps must fit in the horizon, <= 4",
        ),
    ],
)
def test_invalid_plans_name_the_field_and_allowed_values(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ValidationError) as info:
        AuditPlan.model_validate(plan(**overrides))
    message = str(info.value)
    assert field in message and allowed in message, message


def test_recipes_and_env_together_are_ambiguous() -> None:
    with pytest.raises(ValidationError, match="either `env`"):
        AuditPlan.model_validate(plan(recipes=[{"env": "trainenv/Digits-MLP-v0"}]))


def test_duplicate_recipe_names_are_rejected() -> None:
    data = plan()
    data.pop("env")
    data["recipes"] = [{"env": "trainenv/Digits-MLP-v0"}] * 2
    with pytest.raises(ValidationError, match="recipes: names must be unique"):
        AuditPlan.model_validate(data)


def test_check_rejects_an_intervention_the_trainer_lacks() -> None:
    p = AuditPlan.model_validate(plan(interventions=[{"name": "reward_noise", "magnitudes": [1]}]))
    with pytest.raises(
        ValueError,
        match=r"interventions \['reward_noise'\] not supported .*"
        r"SupervisedTrainer; supported: \['lr_shock'",
    ):
        p.check()


def test_check_rejects_a_horizon_past_the_episode() -> None:
    p = AuditPlan.model_validate(plan(onsets=[45], horizon=10))
    with pytest.raises(ValueError, match=r"onsets/horizon: .* 55 .* max_steps = 50"):
        p.check()
    AuditPlan.model_validate(plan(onsets=[45], horizon=10, env_kwargs={"max_steps": 55})).check()


def test_check_reports_bad_env_kwargs() -> None:
    p = AuditPlan.model_validate(plan(env_kwargs={"k": 0}))
    with pytest.raises(ValueError, match=r"recipes\[0\] .*env_kwargs: k must be an integer"):
        p.check()


def test_yaml_round_trip_and_the_example_plan(tmp_path: Path) -> None:
    example = AuditPlan.from_yaml(EXAMPLE)
    example.check()
    assert [r.name for r in example.recipes] == ["Digits-MLP-v0", "Digits-MLP-v0+clip"]
    path = tmp_path / "plan.yaml"
    path.write_text(example.to_yaml())
    assert AuditPlan.from_yaml(path) == example
    with pytest.raises(ValueError, match="does not exist"):
        AuditPlan.from_yaml(tmp_path / "missing.yaml")


def test_default_plan_covers_the_four_dimensions() -> None:
    p = default_plan()
    assert p.recipes[0].env == "trainenv/CartPole-PPO-v0"
    assert {g.intervention.dimension.value for g in p.interventions} == {
        "optimization",
        "data",
        "parametric",
        "signal",
    }
    p.check()
