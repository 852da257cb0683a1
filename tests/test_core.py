"""Pure pieces of trainenv.core: meta-state encoder, actions, collapse rule, reward, knobs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import trainenv
from trainenv.calibration import encoder_path
from trainenv.core import interventions as registry
from trainenv.core.actions import ContinuousMagnitudes, DiscreteMenu
from trainenv.core.collapse import CollapseRule, CollapseState
from trainenv.core.knobs import GRAD_CLIP, LR_SCALE
from trainenv.core.metastate import MetaStateEncoder, squash, symlog, window_features
from trainenv.core.reward import RewardSpec


# -- meta-state -----------------------------------------------------------------------------
def test_symlog_is_odd_monotone_and_maps_non_finite_to_finite() -> None:
    x = np.array([-1e6, -1.0, 0.0, 1.0, 1e6])
    y = symlog(x)
    assert np.all(np.diff(y) > 0) and np.allclose(y, -symlog(-x)) and y[2] == 0
    assert np.isfinite(symlog(np.array([np.nan, np.inf, -np.inf]))).all()
    assert np.all(np.abs(squash(np.array([-1e9, 3.0, 1e9]), 10.0)) <= 10.0)


def test_window_features_are_last_mean_std_per_channel() -> None:
    rows = np.array([[0.0, 1.0], [math.e - 1, 1.0]])
    np.testing.assert_allclose(
        window_features(rows), [1.0, math.log(2), 0.5, math.log(2), 0.5, 0.0]
    )


def reference_features(n: int = 200, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mix = rng.normal(size=(2, 3 * channels))
    return latent @ mix + 0.01 * rng.normal(size=(n, 3 * channels))


def test_fused_encoder_equals_the_scikit_learn_pipeline() -> None:
    features = reference_features()
    encoder = MetaStateEncoder(["a", "b", "c"], variance=0.99).fit(features)
    assert encoder.n_components == 2  # two planted latent factors
    expected = encoder.pipeline(features).transform(features)[:, :2]
    np.testing.assert_allclose(
        encoder.transform(features), squash(expected, encoder.bound), atol=1e-9
    )
    # whitened: unit variance on the reference data
    assert np.allclose(expected.std(axis=0, ddof=1), 1.0, atol=1e-6)


def test_encoder_round_trips_through_plain_npz(tmp_path) -> None:
    features = reference_features()
    encoder = MetaStateEncoder(["a", "b", "c"], window=8).fit(features)
    encoder.save(tmp_path / "enc.npz")
    loaded = MetaStateEncoder.load(tmp_path / "enc.npz")
    assert loaded.channels == ("a", "b", "c") and loaded.window == 8
    np.testing.assert_array_equal(loaded.transform(features), encoder.transform(features))


def test_encoder_validates_its_parameters_and_input() -> None:
    with pytest.raises(ValueError, match="window"):
        MetaStateEncoder(["a"], window=0)
    with pytest.raises(ValueError, match="variance"):
        MetaStateEncoder(["a"], variance=1.5)
    with pytest.raises(ValueError, match=r"shape \(n >= 2, 3\)"):
        MetaStateEncoder(["a"]).fit(np.zeros((5, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        MetaStateEncoder(["a"]).transform(np.zeros(3))


@pytest.mark.parametrize("env_id", trainenv.ENV_IDS)
def test_every_registered_env_ships_a_loadable_encoder(env_id: str) -> None:
    encoder = MetaStateEncoder.load(encoder_path(env_id))
    assert 1 <= encoder.n_components <= encoder.max_components
    # The variance each latent explains: largest first, and the fewest components that explain
    # the encoder's target share, unless max_components capped them first.
    ratio = encoder.explained_variance_ratio_
    assert ratio is not None and ratio.shape == (encoder.n_components,)
    assert (ratio > 0).all() and (np.diff(ratio) <= 0).all() and ratio.sum() <= 1.0
    if encoder.n_components < encoder.max_components:
        assert ratio[:-1].sum() <= encoder.variance < ratio.sum()


# -- actions --------------------------------------------------------------------------------
def test_discrete_menu_is_noop_then_each_intervention_at_each_level() -> None:
    shock, rollback = registry.get("lr_shock"), registry.get("rollback")
    menu = DiscreteMenu([shock, rollback], levels=3)
    assert menu.space.n == 1 + 3 + 1
    assert menu.decode(0) == {} and menu.describe(0) == "no-op"
    assert menu.decode(np.int64(3)) == {"lr_shock": shock.high}
    assert menu.decode(4) == {"rollback": 1.0}
    for bad in (-1, 5, 1.5, "1", None, True):
        with pytest.raises(ValueError, match="integer"):
            menu.decode(bad)


def test_continuous_magnitudes_map_components_to_log_scale_and_back() -> None:
    shock, clip = registry.get("lr_shock"), registry.get("grad_clip")
    spec = ContinuousMagnitudes([shock, clip])
    assert spec.decode([-1.0, 0.0]) == {}
    assert spec.decode([1.0, -0.3]) == {"lr_shock": pytest.approx(shock.high)}
    action = spec.encode({"grad_clip": 0.5, "lr_shock": 100.0})
    assert spec.decode(action) == {
        "lr_shock": pytest.approx(100.0, rel=1e-5),
        "grad_clip": pytest.approx(0.5, rel=1e-5),
    }
    for bad in ([np.nan, 0], [0, np.inf], [1.5, 0], [0, 0, 0], "x"):
        with pytest.raises(ValueError, match="action"):
            spec.decode(bad)


# -- collapse and reward ----------------------------------------------------------------------
def run_rule(rule: CollapseRule, ps: list[float]) -> list[str | None]:
    state, reasons = CollapseState(best=ps[0]), []
    for p in ps[1:]:
        state, reason = rule.update(state, p, diverged=False)
        reasons.append(reason)
    return reasons


def test_collapse_needs_patience_steps_below_half_the_best_after_arming() -> None:
    rule = CollapseRule(drop=0.5, patience=3, arm_at=0.2)
    # learns to 0.8, drops to 0.3 (< 0.4) for three steps: collapse at the third
    assert run_rule(rule, [0.0, 0.8, 0.3, 0.3, 0.3]) == [None, None, None, "performance"]
    # a dip that recovers resets the count
    assert run_rule(rule, [0.0, 0.8, 0.3, 0.3, 0.7, 0.3, 0.3]) == [None] * 6
    # never armed: best stays below arm_at, so noise near chance is not a collapse
    assert run_rule(rule, [0.0, 0.15, 0.0, 0.0, 0.0, 0.0]) == [None] * 5


def test_divergence_collapses_at_once() -> None:
    assert CollapseRule().update(CollapseState(), 0.5, diverged=True)[1] == "non-finite"


def test_reward_formula() -> None:
    spec = RewardSpec(drawdown_weight=0.1, cost_weight=2.0, collapse_penalty=5.0)
    assert spec(0.5, 0.6, 0.8, 0.01, False) == pytest.approx(0.1 - 0.1 * 0.2 - 0.02)
    assert spec(0.5, 0.6, 0.8, 0.01, True) == -5.0


def test_knob_specs_validate_with_the_field_and_range_in_the_message() -> None:
    assert LR_SCALE.validate(2) == 2.0 and GRAD_CLIP.validate(math.inf) == math.inf
    with pytest.raises(ValueError, match=r"'lr_scale' must be in \[1e-06, 1000000.0\]"):
        LR_SCALE.validate(-1)
    with pytest.raises(ValueError, match="lr_scale"):
        LR_SCALE.validate(float("nan"))
