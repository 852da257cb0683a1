"""The reference band and deviation scores, the meta-state deviation detector, and the
early-warning statistics, on synthetic data with known answers."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import trainenv  # noqa: F401  (registers the environments)
import trainenv.warning as ew
import trainenv.warning.populations as ew_populations
from trainenv import cli
from trainenv.audit.store import ResultStore
from trainenv.calibration import calibrate
from trainenv.core.band import ReferenceBand
from trainenv.core.collapse import CollapseRule
from trainenv.core.metastate import MetaStateEncoder, feature_columns, window_features
from trainenv.core.telemetry import ChannelSpec, dynamics_channels
from trainenv.warning.detectors import Cusum, MetaStateDeviation, SelfDeviation

DIGITS = "trainenv/Digits-MLP-v0"


# -- the band -----------------------------------------------------------------------------------
def test_band_distance_is_the_mahalanobis_distance() -> None:
    covariance = np.array([[[4.0, 0.0], [0.0, 1.0]], [[2.0, 0.6], [0.6, 1.0]]])
    band = ReferenceBand.from_covariance(np.array([10, 20]), np.zeros((2, 2)), covariance)
    assert band.distance(np.array([2.0, 0.0]), updates=10) == pytest.approx(1.0)  # 2 / sd 2
    z = np.array([1.0, -2.0])
    expected = math.sqrt(z @ np.linalg.solve(covariance[1], z))
    assert band.distance(z, updates=20) == pytest.approx(expected)


def test_band_lookup_follows_training_progress_in_updates() -> None:
    band = ReferenceBand(np.array([10, 20, 30]), np.zeros((3, 1)), np.ones((3, 1, 1)))
    assert [band.index(u) for u in (0, 10, 15, 20, 30, 10_000)] == [0, 0, 1, 1, 2, 2]


def test_band_fit_recovers_a_known_gaussian_band() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [1.0, -1.0], [2.0, 3.0]])
    covariance = np.array([[1.0, 0.5], [0.5, 2.0]])
    chol = np.linalg.cholesky(covariance)
    updates = np.array([10, 20, 30])
    runs = [(means + rng.standard_normal((3, 2)) @ chol.T, updates) for _ in range(2000)]
    band = ReferenceBand.fit(runs, radius=1, min_std=1e-6)
    np.testing.assert_allclose(band.mean, means, atol=0.1)
    # A point 3 standard deviations out along the first axis, at the middle step:
    point = means[1] + np.array([3.0 * math.sqrt(covariance[0, 0]), 0.0])
    expected = math.sqrt((point - means[1]) @ np.linalg.solve(covariance, point - means[1]))
    assert band.distance(point, updates=20) == pytest.approx(expected, rel=0.05)


def test_band_fit_rejects_too_few_runs_and_mixed_grids() -> None:
    run = (np.zeros((3, 2)), np.array([10, 20, 30]))
    with pytest.raises(ValueError, match=">= 2 reference runs"):
        ReferenceBand.fit([run])
    with pytest.raises(ValueError, match="update grid"):
        ReferenceBand.fit([run, (np.zeros((3, 2)), np.array([5, 10, 15]))])


def test_a_band_that_cannot_be_estimated_falls_back_to_its_floor() -> None:
    """Identical runs have no spread: the covariance is the floor, min_std^2 I."""
    run = (np.ones((4, 3)), np.array([1, 2, 3, 4]))
    band = ReferenceBand.fit([run, run], min_std=0.5)
    assert band.distance(np.ones(3) + [0.5, 0.0, 0.0], updates=2) == pytest.approx(1.0)


def test_encoder_saves_its_band_and_loads_files_without_one(tmp_path) -> None:
    rng = np.random.default_rng(1)
    encoder = MetaStateEncoder(["a", "b"]).fit(rng.standard_normal((50, 6)))
    plain = tmp_path / "plain.npz"
    encoder.save(plain)
    assert MetaStateEncoder.load(plain).band_ is None  # files from before the band
    d = encoder.n_components
    encoder.band_ = ReferenceBand.from_covariance(
        np.array([1, 2]), rng.standard_normal((2, d)), np.stack([np.eye(d)] * 2)
    )
    encoder.save(tmp_path / "band.npz")
    loaded = MetaStateEncoder.load(tmp_path / "band.npz").band_
    assert loaded is not None
    np.testing.assert_array_equal(loaded.mean, encoder.band_.mean)
    np.testing.assert_array_equal(loaded.whiten, encoder.band_.whiten)


def test_calibrate_fits_a_band_per_step_from_two_seeds_and_none_from_one() -> None:
    env = gym.make(DIGITS, observation="telemetry", max_steps=4).unwrapped
    encoder = calibrate(env, seeds=2, window=8)
    assert encoder.band_ is not None and list(encoder.band_.updates) == [10, 20, 30, 40]
    assert calibrate(env, seeds=1, window=8).band_ is None


def test_calibrate_command_writes_an_encoder_with_its_band(tmp_path, capsys) -> None:
    out = tmp_path / "encoder.npz"
    assert cli.main(["calibrate", DIGITS, "--seeds", "2", "--out", str(out)]) == 0
    band = MetaStateEncoder.load(out).band_
    assert band is not None and len(band) == 50  # the env's 50 steps
    assert "band over 50 steps" in capsys.readouterr().out
    assert cli.main(["calibrate", "trainenv/Nope", "--out", str(out)]) == 2
    assert "env_id" in capsys.readouterr().err


# -- the deviation scores in the env ---------------------------------------------------------
def test_env_reports_both_deviation_scores_in_info_and_optionally_in_obs() -> None:
    env = gym.make(DIGITS, deviation_in_obs=True).unwrapped
    band, d = env.encoder.band_, env.encoder.n_components
    obs, info = env.reset(seed=3)
    assert obs.shape == (d + 3,) and info["deviation"] == 0.0 and info["self_deviation"] == 0.0
    latents, deviations, self_deviations = [], [], []
    for _ in range(14):
        obs, _, _, _, info = env.step(0)
        assert env.observation_space.contains(obs)
        latents.append(obs[:d])
        deviations.append(info["deviation"])
        self_deviations.append(info["self_deviation"])
        assert info["deviation"] == pytest.approx(
            band.distance(obs[:d].astype(np.float64), info["updates"]), rel=1e-3
        )
        assert obs[d] == pytest.approx(10 * math.tanh(info["deviation"] / 10), rel=1e-5)
    recomputed = SelfDeviation().scores(np.array(latents, dtype=np.float64))
    np.testing.assert_allclose(self_deviations, recomputed, rtol=1e-3, atol=1e-5)
    assert self_deviations[-1] > 0  # past the detector's warm-up


def test_deviation_scores_are_none_without_an_encoder_and_obs_needs_a_band() -> None:
    env = gym.make(DIGITS, observation="telemetry").unwrapped
    env.reset(seed=0)
    info = env.step(0)[-1]
    assert info["deviation"] is None and info["self_deviation"] is None
    with pytest.raises(ValueError, match="deviation_in_obs"):
        gym.make(DIGITS, observation="telemetry", deviation_in_obs=True)


# -- detectors ----------------------------------------------------------------------------------
def test_meta_state_deviation_needs_persistent_excess() -> None:
    values = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 5.0, math.nan, None]
    once = MetaStateDeviation(threshold=4.0)
    assert list(np.flatnonzero(once.scores(values) > 4.0)) == [2, 4, 5, 6]
    twice = MetaStateDeviation(threshold=4.0, persistence=2)
    assert list(np.flatnonzero(twice.scores(values) > 4.0)) == [5, 6]
    with pytest.raises(ValueError, match="persistence"):
        MetaStateDeviation(persistence=0)


# -- statistics ---------------------------------------------------------------------------------
RULE = CollapseRule(drop=0.5, patience=3)


def test_collapse_onset_is_the_start_of_the_streak_that_fired() -> None:
    p = [0.5, 0.9, 0.9, 0.3, 0.8, 0.3, 0.2, 0.1]  # below 0.45 at 4, back at 5, then 6, 7, 8
    assert ew.collapse_onset(np.array(p), 0.0, RULE, "performance") == 6
    assert ew.collapse_onset(np.array(p), 0.0, RULE, None) is None
    # Non-finite: the streak still running when training broke, else the last step.
    assert ew.collapse_onset(np.array([0.5, 0.9, 0.2, 0.0]), 0.0, RULE, "non-finite") == 3
    assert ew.collapse_onset(np.array([0.5, 0.9, 0.9]), 0.0, RULE, "non-finite") == 3


def test_lead_time_counts_from_the_first_alarm_within_the_horizon() -> None:
    alarms = np.zeros(12, dtype=bool)
    alarms[[2, 5, 6]] = True  # steps 3, 6, 7
    assert ew.lead_time(alarms, onset=10, horizon=5) == 4  # window 5..10, first alarm at 6
    assert ew.lead_time(alarms, onset=10, horizon=2) is None  # window 8..10: silent
    assert ew.lead_time(alarms, onset=7, horizon=0) == 0  # an alarm at the onset itself


def test_auroc_of_a_perfect_score_is_one_and_of_its_reverse_zero() -> None:
    labels = np.array([0, 0, 0, 1, 1], dtype=bool)
    assert ew.auroc(np.array([0.1, 0.2, 0.3, 0.8, np.inf]), labels) == 1.0
    assert ew.auroc(-np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 0.0
    assert math.isnan(ew.auroc(np.ones(3), np.zeros(3, dtype=bool)))


def test_auroc_equals_scikit_learns_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.3 + 0.1 * scores
    assert ew.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_cusum_alarms_at_a_planted_change_point() -> None:
    rng = np.random.default_rng(4)
    loss = 1.0 + 0.01 * rng.standard_normal(80)
    loss[50:] += 0.05
    alarms = np.flatnonzero(Cusum(threshold=8.0).scores(loss) > 8.0)
    assert 50 <= alarms[0] <= 55


METASTATE = "meta-state deviation"  # in trainenv.warning.DETECTORS, which reads "deviation"
CHANNELS = ("train_loss", "val_accuracy", "lr")
ROLES = ("dynamics", "performance", "knob")


def synthetic_traces(
    seeds: int = 6,
    lead: int = 4,
    onset: int = 30,
    k: int = 10,
    calibration: int = 4,
    leak: bool = False,
) -> list[ew.Trace]:
    """Per seed a reference run (noise) and a run whose inputs step up ``lead`` steps before a
    collapse onset at step ``onset`` (a planted change point), plus a survivor; first,
    ``calibration`` unperturbed calibration runs. The step shows in ``deviation`` and in the
    window features (:data:`CHANNELS`) of ``train_loss``, a dynamics channel, or with
    ``leak=True`` only in those of ``val_accuracy`` and ``lr``: the performance and knob
    channels (a detector reading them "precedes collapse" trivially)."""
    rng = np.random.default_rng(7)
    steps, width = 40, len(CHANNELS)
    planted = [1, 2] if leak else [0]
    columns = [block * width + c for block in (0, 1) for c in planted]  # last and mean
    runs = [(1_000_000 + i, "calibration", None) for i in range(calibration)]
    kinds = (("reference", None), ("ramp", onset), ("mild", None))
    runs += [(seed, scenario, collapse) for seed in range(seeds) for scenario, collapse in kinds]
    traces = []
    for seed, scenario, collapse in runs:
        deviation = np.abs(rng.standard_normal(steps))
        features = rng.standard_normal((steps, 3 * width))
        if collapse is not None:
            deviation[collapse - lead - 1 :] = 10.0
            features[collapse - lead - 1 :, columns] += 8.0
        inputs = {
            "deviation": deviation,
            "latents": rng.standard_normal((steps, 2)),
            "loss": 1 + 0.1 * rng.standard_normal(steps),
            "grad_norm": 1 + 0.1 * rng.standard_normal(steps),
            "features": features,
            "updates": k * np.arange(1, steps + 1),
        }
        n = collapse + 3 if collapse else steps
        traces.append(
            ew.Trace("synthetic", seed, scenario, k, np.linspace(0.2, 0.9, n),
                     {key: v[:n] for key, v in inputs.items()}, collapse,
                     None if scenario in ("reference", "calibration") else 10, CHANNELS, ROLES)
        )  # fmt: skip
    return traces


def test_evaluate_recovers_planted_lead_times_and_a_perfect_auroc() -> None:
    table = ew.evaluate_detectors(
        synthetic_traces(lead=4, calibration=0), horizon=4, false_alarm_rate=0.05, n_boot=200
    )
    row = table.set_index("detector").loc[METASTATE]
    assert row["collapses"] == 6 and row["detected"] == 6 and row["detection_rate"] == 1.0
    assert row["lead_median"] == 40 and row["lead_median_lo"] == row["lead_median_hi"] == 40
    assert row["auroc"] == 1.0  # positives (the 5 steps before onset) all score 10
    assert 0.0 < row["false_alarm_rate"] < 0.15  # out of sample, near the 5 % target
    assert row["survivors"] == 6
    # The loss-based detectors see pure noise: no better than chance.
    assert table.set_index("detector").loc["loss spike", "auroc"] < 0.75


def test_lead_is_capped_by_the_horizon_and_early_transients_are_misses() -> None:
    held = ew.evaluate_detectors(
        synthetic_traces(lead=8, calibration=0), horizon=4, false_alarm_rate=0.05, n_boot=50
    )
    assert held.set_index("detector").loc[METASTATE, "lead_median"] == 40  # H steps x k
    traces = synthetic_traces(lead=8, calibration=0)
    for trace in traces:
        if trace.collapse_onset is not None:  # one spike 8 steps before the onset, then calm
            trace.inputs["deviation"] = np.where(np.arange(len(trace.p)) == 21, 10.0, 0.0)
    row = ew.evaluate_detectors(traces, horizon=4, false_alarm_rate=0.05, n_boot=50)
    row = row.set_index("detector").loc[METASTATE]
    assert row["detected"] == 0 and row["detection_rate"] == 0.0 and math.isnan(row["lead_median"])
    with pytest.raises(ValueError, match="cross-fitting"):
        ew.evaluate_detectors([t for t in synthetic_traces(calibration=0) if t.seed == 0], 4)


def test_traces_survive_a_round_trip_through_parquet(tmp_path) -> None:
    traces = synthetic_traces(seeds=2)
    ew.traces_frame(traces).to_parquet(tmp_path / "traces.parquet")
    back = ew.read_traces(pd.read_parquet(tmp_path / "traces.parquet"))

    def key(t: ew.Trace) -> tuple[int, str]:
        return t.seed, t.scenario

    for a, b in zip(sorted(traces, key=key), sorted(back, key=key)):
        assert (a.seed, a.scenario, a.k, a.collapse_onset, a.ramp_onset) == (
            b.seed, b.scenario, b.k, b.collapse_onset, b.ramp_onset
        )  # fmt: skip
        assert (a.channels, a.roles) == (b.channels, b.roles) and set(a.inputs) == set(b.inputs)
        np.testing.assert_array_equal(a.p, b.p)
        for name, values in a.inputs.items():
            np.testing.assert_array_equal(values, b.inputs[name])


def test_ramp_magnitudes_grow_geometrically_then_hold() -> None:
    ramp = ew.Ramp("lr_shock", 2.0, 200.0, steps=3, onset=5)
    assert ramp.magnitude(5) is None
    assert [ramp.magnitude(s) for s in (6, 7, 8, 20)] == pytest.approx([2.0, 20.0, 200.0, 200.0])
    with pytest.raises(ValueError, match="lr_shock"):
        ew.Ramp("lr_shock", 1.0, 200.0, steps=3, onset=5)  # below the registered range


def test_simulated_runs_record_what_the_env_reports() -> None:
    """A severe weight-noise ramp on Digits collapses; its reference run does not; both
    record the window features of every channel, with the channels' declared roles."""
    ramps = [ew.Ramp("weight_noise", 0.01, 3.0, 25, 10)]
    calibration, reference, ramp = (
        ew.simulate_run(t) for t in ew.tasks_for("supervised", DIGITS, ramps, [0], calibration=1)
    )
    assert calibration.scenario == ew.CALIBRATION and calibration.seed == 1_000_000
    assert reference.reference and reference.collapse_onset is None and len(reference.p) == 50
    assert ramp.ramp_onset == 11 and ramp.collapse_onset is not None
    assert ramp.collapse_onset > ramp.ramp_onset and len(ramp.p) >= ramp.collapse_onset
    np.testing.assert_array_equal(reference.p[:10], ramp.p[:10])  # same seed, same prefix
    assert dict(zip(reference.channels, reference.roles))["val_accuracy"] == "performance"
    assert reference.inputs["features"].shape == (50, 3 * len(reference.channels))
    np.testing.assert_array_equal(reference.inputs["updates"], 10 * np.arange(1, 51))


def test_recorded_window_features_are_what_the_env_encodes() -> None:
    env = gym.make(DIGITS).unwrapped
    env.reset(seed=1)
    for _ in range(3):
        obs, *_ = env.step(0)
        latent = env.encoder.transform(window_features(env.telemetry_window))
        np.testing.assert_allclose(latent, obs[: env.encoder.n_components], rtol=1e-5, atol=1e-5)


# -- the leak-free meta-state and the learned baseline --------------------------------------------
def test_channel_roles_are_declared_data_and_validated() -> None:
    from trainenv.trainers import lm, sb3_settings, supervised

    assert dynamics_channels(supervised.CHANNELS) == (
        "train_loss", "grad_norm", "update_ratio", "weight_norm"
    )  # fmt: skip
    assert {"val_loss", "lr"}.isdisjoint(dynamics_channels(lm.CHANNELS))
    ppo = sb3_settings.LOSS_CHANNELS["PPO"] + sb3_settings.COMMON_CHANNELS
    assert {"episode_return", "lr"}.isdisjoint(dynamics_channels(ppo))
    assert "value_loss" in dynamics_channels(ppo)
    with pytest.raises(ValueError, match="role of channel 'x'"):
        ChannelSpec("x", "a number", role="target")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subset"):
        feature_columns(["a", "b"], ["c"])


def claim3_table(traces: list[ew.Trace]) -> pd.DataFrame:
    encoders = ew.fit_meta_states([t for t in traces if t.scenario == ew.CALIBRATION])
    evaluated = ew.with_meta_states(traces, encoders)
    return ew.evaluate_detectors(evaluated, 4, 0.05, 200, 0.95, ew.CLAIM3, ew.LEARNED, ew.PRIMARY)


def test_a_planted_leak_precedes_collapse_in_the_full_meta_state_only() -> None:
    """The collapse is planted in the performance and knob channels only: the full meta-state
    "warns" of it perfectly, the leak-free one, which does not read them, sees noise."""
    traces = synthetic_traces(leak=True)
    encoders = ew.fit_meta_states([t for t in traces if t.scenario == ew.CALIBRATION])
    assert encoders[ew.LEAK_FREE].channels == ("train_loss",)
    assert encoders[ew.FULL].channels == CHANNELS
    table = claim3_table(traces).set_index("detector")
    assert table.loc[ew.FULL_METASTATE, "auroc"] > 0.95
    assert table.loc[ew.FULL_METASTATE, "detection_rate"] == 1.0
    assert table.loc[ew.PRIMARY, "auroc_lo"] < 0.5 < table.loc[ew.PRIMARY, "auroc_hi"]
    assert table.loc[ew.BASELINE, "auroc"] < 0.75  # it reads the leak-free features too
    assert table.loc[ew.FULL_METASTATE, "auroc_vs_primary_lo"] > 0.2  # the leak, measured
    # Planted in the dynamics channel instead, the leak-free meta-state sees it.
    honest = claim3_table(synthetic_traces(leak=False)).set_index("detector")
    assert honest.loc[ew.PRIMARY, "auroc"] > 0.95 and honest.loc[ew.BASELINE, "auroc"] > 0.95
    assert honest.loc[ew.PRIMARY, "lead_median"] == 40


class SpyBaseline(ew.LogisticBaseline):
    """A logistic baseline whose scorers refuse runs of the seeds they were trained on."""

    fits: list[set[int]] = []

    def fit(self, traces, horizon):
        seeds = {t.seed for t in traces}
        self.fits.append(seeds)
        inner = super().fit(traces, horizon)

        def score(trace):
            assert trace.seed not in seeds, f"seed {trace.seed} scored by a model trained on it"
            return inner(trace)

        return score


def test_the_logistic_baseline_never_scores_a_seed_it_was_trained_on() -> None:
    traces = [t for t in synthetic_traces(seeds=4) if t.scenario != ew.CALIBRATION]
    for trace in traces:
        trace.inputs["features_leak_free"] = trace.inputs["features"]
    spy = SpyBaseline("features_leak_free")
    ew.evaluate_detectors(traces, 4, 0.05, 50, detectors={}, learned={"spy": spy})
    # Per held-out seed: one model on the 3 others, and 3 on 2 for its threshold.
    assert sorted(len(s) for s in spy.fits) == [2] * 12 + [3] * 4


def test_the_logistic_baseline_cannot_memorise_a_held_out_seeds_labels() -> None:
    """Each seed's positives lie along a direction of their own: a model that saw a seed's
    labels would separate them (in-sample AUROC near 1); cross-fitted by seed it cannot."""
    rng = np.random.default_rng(3)
    traces = []
    for seed in range(6):
        direction = rng.standard_normal(12)
        for scenario, collapse, ramp in (("reference", None, None), ("ramp", 30, 10)):
            x = rng.standard_normal((33 if collapse else 40, 12))
            if collapse:
                x[25:] += 3 * direction
            trace = ew.Trace("synthetic", seed, scenario, 1, np.ones(len(x)),
                             {"features_leak_free": x}, collapse, ramp)  # fmt: skip
            traces.append(trace)
    model = ew.LogisticBaseline()
    in_sample = model.fit(traces, 4)
    samples = [(in_sample(t)[a:b], y) for t in traces for a, b, y in [t.labelled_steps(4)]]
    assert ew.auroc(*map(np.concatenate, zip(*samples))) > 0.9
    table = ew.evaluate_detectors(traces, 4, 0.05, 100, detectors={}, learned={"lr": model})
    assert table.loc[0, "auroc"] < 0.75


def test_meta_states_need_calibration_runs() -> None:
    traces = synthetic_traces(calibration=1)
    with pytest.raises(ValueError, match="calibration"):
        ew.fit_meta_states([t for t in traces if t.scenario == ew.CALIBRATION])


def test_simulate_runs_stores_each_run_and_resumes(tmp_path) -> None:
    """Runs go through the shared task runner into a results store; a second call reads them
    back instead of rerunning them, and gives the same traces."""
    ramp = ew.Ramp("lr_shock", 2.0, 300.0, steps=5, onset=3)
    tasks = ew.tasks_for("supervised", DIGITS, [ramp], [0], env_kwargs={"max_steps": 8})
    store = ResultStore(tmp_path)
    first = ew.simulate_runs(tasks, store, workers=1, progress=False)
    assert sorted(t.scenario for t in first) == sorted(t.scenario for t in tasks)
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "runs").glob("*.parquet")}
    assert len(ResultStore(tmp_path).finished()) == len(tasks)
    again = ew.simulate_runs(tasks, ResultStore(tmp_path), workers=1, progress=False)
    assert {f: f.stat().st_mtime_ns for f in files} == files
    for a, b in zip(first, again):
        assert (a.seed, a.scenario, a.collapse_onset) == (b.seed, b.scenario, b.collapse_onset)
        np.testing.assert_array_equal(a.p, b.p)


# -- simulations on populations -------------------------------------------------------------------
def _by_key(traces: list[ew.Trace]) -> dict[tuple[int, str], ew.Trace]:
    return {(t.seed, t.scenario): t for t in traces}


def test_population_simulation_records_the_per_run_columns_and_runs(tmp_path) -> None:
    """The population path gives the per-run path's trace columns, channels, roles and
    (seed, scenario) set (values differ: the batched MLP is another implementation)."""
    ramp = ew.Ramp("lr_shock", 2.0, 300.0, steps=3, onset=2)
    tasks = ew.tasks_for("supervised", DIGITS, [ramp], [0, 1], {"max_steps": 5}, calibration=1)
    units = ew_populations.work_units(tasks, "auto", workers=1)
    assert units == [tuple(tasks)]  # one population of every task, in order
    pop = ew.simulate_runs(tasks, ResultStore(tmp_path / "pop"), progress=False)
    alone = ew.simulate_runs(tasks, ResultStore(tmp_path / "run"), backend="serial",
                             progress=False)  # fmt: skip
    assert _by_key(pop).keys() == _by_key(alone).keys() == {(t.seed, t.scenario) for t in tasks}
    assert list(ew.traces_frame(pop).columns) == list(ew.traces_frame(alone).columns)
    for key, a in _by_key(alone).items():
        b = _by_key(pop)[key]
        assert (a.k, a.channels, a.roles, a.ramp_onset) == (b.k, b.channels, b.roles, b.ramp_onset)
        assert {n: v.shape for n, v in a.inputs.items()} == {
            n: v.shape for n, v in b.inputs.items()
        }
        np.testing.assert_array_equal(a.inputs["updates"], b.inputs["updates"])


def test_simulation_backends_follow_the_audits_rule() -> None:
    """auto: populations where the env has one, one task per unit elsewhere (TinyLM); asking
    for populations names the env without one; an unknown backend is refused."""
    ramp = ew.Ramp("lr_shock", 2.0, 300.0, steps=3, onset=2)
    lm = ew.tasks_for("LM", "trainenv/TinyLM-v0", [ramp], [0])
    digits = ew.tasks_for("supervised", DIGITS, [ramp], [0, 1, 2])
    units = ew_populations.work_units(lm + digits, "auto", workers=2)
    assert units[:2] == lm and sorted(len(u) for u in units[2:]) == [3, 3]
    assert ew_populations.work_units(digits, "process", workers=2) == digits
    with pytest.raises(ValueError, match="population form.*TinyLM-v0"):
        ew_populations.work_units(lm + digits, "population", workers=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        ew.simulate_runs(digits, ResultStore("unused"), backend="ray")


def test_population_simulation_resumes_without_rerunning_finished_runs(
    tmp_path, monkeypatch
) -> None:
    ramp = ew.Ramp("lr_shock", 2.0, 300.0, steps=3, onset=2)
    tasks = ew.tasks_for("supervised", DIGITS, [ramp], [0, 1], {"max_steps": 4})
    ew.simulate_runs(tasks[:2], ResultStore(tmp_path), progress=False)  # "killed" after 2
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "runs").glob("*.parquet")}
    ran: list[tuple[int, str]] = []
    batch = ew_populations.simulate_batch

    def spy(unit: tuple[ew.Task, ...]) -> list[ew.Trace]:
        ran.extend((t.seed, t.scenario) for t in unit)
        return batch(unit)

    monkeypatch.setattr(ew_populations, "simulate_batch", spy)
    traces = ew.simulate_runs(tasks, ResultStore(tmp_path), progress=False)
    assert ran == [(t.seed, t.scenario) for t in tasks[2:]]
    assert {f: f.stat().st_mtime_ns for f in files} == files
    assert len(traces) == len(tasks)


def test_a_ramp_on_one_member_leaves_the_others_unperturbed() -> None:
    """Member 1's ramp reaches member 1 only: member 0 (same seed, unperturbed) records
    exactly what it records alone, and member 1 departs from it only after the onset."""
    ramp = ew.Ramp("lr_shock", 10.0, 300.0, steps=2, onset=2)
    reference, ramped = ew.tasks_for("supervised", DIGITS, [ramp], [0], {"max_steps": 5})
    both = ew_populations.simulate_batch([reference, ramped])
    (alone,) = ew_populations.simulate_batch([reference])
    for name, values in alone.inputs.items():
        np.testing.assert_array_equal(both[0].inputs[name], values)
    np.testing.assert_array_equal(both[0].p, alone.p)
    np.testing.assert_array_equal(both[1].p[:2], alone.p[:2])
    assert not np.array_equal(both[1].inputs["loss"][2:], alone.inputs["loss"][2:])
