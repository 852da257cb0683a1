"""The intervention registry and what the supervised trainer supports (every offered
intervention's effect on every env is checked in ``test_contract.py``)."""

from __future__ import annotations

import math

import pytest

import trainenv  # noqa: F401
from trainenv.core import interventions as registry
from trainenv.core.interventions import ROLLBACK_EVENT, Dimension, Intervention, Role
from trainenv.trainers.supervised import SupervisedTrainer


def test_every_dimension_has_perturbations_and_the_registry_is_well_formed() -> None:
    interventions = registry.all_interventions()
    for dimension in Dimension:
        assert any(i.dimension is dimension and i.role is Role.PERTURBATION for i in interventions)
    assert any(i.role is Role.STABILIZER for i in interventions)
    for i in interventions:
        assert 0 < i.low <= i.high < math.inf and i.duration >= 1 and i.description
        assert math.isclose(i.magnitude(0.0), i.low) and math.isclose(i.magnitude(1.0), i.high)
        levels = i.levels(4)
        assert list(levels) == sorted(levels) and len(levels) == (1 if i.low == i.high else 4)


def test_log_scale_magnitudes_are_geometric() -> None:
    shock = registry.get("lr_shock")
    assert math.isclose(shock.magnitude(0.5), math.sqrt(shock.low * shock.high))


def test_registry_rejects_bad_entries_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="exactly one of knob and event"):
        Intervention("x", Dimension.DATA, Role.PERTURBATION, 1, 2, False, "d")
    with pytest.raises(ValueError, match="low <= high"):
        Intervention("x", Dimension.DATA, Role.PERTURBATION, 2, 1, False, "d", knob="k")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("lr_shock"))
    with pytest.raises(ValueError, match="unknown intervention 'nope'"):
        registry.get("nope")
    assert registry.get_perturbation("lr_shock") is registry.get("lr_shock")
    with pytest.raises(ValueError, match=r"'grad_clip' is not a perturbation; .*'lr_shock'"):
        registry.get_perturbation("grad_clip")


def test_supervised_trainer_supports_all_four_dimensions_and_the_stabilizers() -> None:
    names = {i.name for i in registry.supported((*SupervisedTrainer().targets, ROLLBACK_EVENT))}
    assert {"lr_shock", "optimizer_reset", "batch_shrink", "input_noise", "input_shift",
            "weight_noise", "weight_rescale", "layer_reset", "label_noise", "grad_clip",
            "lr_backoff", "rollback", "grad_noise"} <= names  # fmt: skip
    assert "reward_noise" not in names  # RL only
