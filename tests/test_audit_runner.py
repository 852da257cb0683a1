"""Paired runs on Digits: the branches, the perturbation window, stabilizers, resuming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from trainenv.audit.plan import AuditPlan
from trainenv.audit.runner import BASELINE, plan_groups, run_audit
from trainenv.audit.store import ResultStore
from trainenv.audit.summary import summarize

ONSET, HORIZON = 3, 8


def tiny_plan(**overrides: Any) -> AuditPlan:
    """2 seeds x (1 unperturbed + 4 perturbed) runs on Digits, about a second serially."""
    return AuditPlan.model_validate(
        {
            "env": "trainenv/Digits-MLP-v0",
            "interventions": [
                {"name": "lr_shock", "magnitudes": [10, 1000]},
                {"name": "weight_noise", "magnitudes": [0.1, 3]},
            ],
            "onsets": [ONSET],
            "horizon": HORIZON,
            "seeds": [0, 1],
            "backend": "serial",
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> ResultStore:
    return run_audit(tiny_plan(), tmp_path_factory.mktemp("audit"), progress=False)


def by_run(store: ResultStore, row: pd.Series) -> pd.DataFrame:
    return store.steps([row["run_id"]]).sort_values("step").reset_index(drop=True)


def manual_rollout(seed: int, actions: list[dict[str, float]]) -> list[float]:
    """p after each step of a fresh env driven by hand (no audit code involved)."""
    env = gym.make(
        "trainenv/Digits-MLP-v0",
        action_mode="continuous",
        interventions=["lr_shock", "weight_noise"],
    ).unwrapped
    env.reset(seed=seed)
    return [env.step(env.action_spec.encode(a))[4]["p"] for a in actions]


def test_every_run_is_stored_once_with_its_steps(audit: ResultStore) -> None:
    runs = audit.runs()
    assert len(runs) == tiny_plan().n_runs == 10 and runs["run_id"].is_unique
    assert (runs["status"] == "ok").all()
    steps = audit.steps()
    assert not steps.duplicated(["run_id", "step"]).any()
    for _, row in runs.iterrows():
        s = by_run(audit, row)
        first = 0 if row["kind"] == "baseline" else ONSET + 1
        expected = list(range(first, ONSET + HORIZON + 1))
        if isinstance(row["collapse_reason"], str):  # a collapse ends a branch early
            expected = expected[: len(s)]
        assert s["step"].tolist() == expected


def test_branches_match_runs_driven_by_hand(audit: ResultStore) -> None:
    runs = audit.runs()
    base = runs[(runs["kind"] == "baseline") & (runs["seed"] == 1)].iloc[0]
    noop: dict[str, float] = {}
    expected = manual_rollout(1, [noop] * (ONSET + HORIZON))
    np.testing.assert_array_equal(by_run(audit, base)["p"].to_numpy()[1:], expected)

    shock = runs[
        (runs["intervention"] == "lr_shock") & (runs["magnitude"] == 10) & (runs["seed"] == 1)
    ].iloc[0]
    hit = {"lr_shock": 10.0}
    expected = manual_rollout(1, [noop] * ONSET + [hit] + [noop] * (HORIZON - 1))
    np.testing.assert_array_equal(by_run(audit, shock)["p"].to_numpy(), expected[ONSET:])
    assert shock["applied_magnitude"] == pytest.approx(10.0, rel=1e-6)


def test_knob_perturbation_lasts_its_window_then_resets(audit: ResultStore) -> None:
    runs = audit.runs()
    shock = runs[(runs["intervention"] == "lr_shock") & (runs["magnitude"] == 10)].iloc[0]
    s = by_run(audit, shock)
    assert shock["duration"] == 5
    np.testing.assert_allclose(s["knob.lr_scale"][:5], 10.0, rtol=1e-6)
    assert (s["knob.lr_scale"][5:] == 1.0).all()
    assert s["applied"][0].startswith("lr_shock=") and (s["applied"][1:] == "").all()


def test_metrics_order_with_magnitude(audit: ResultStore) -> None:
    runs = audit.runs().set_index(["intervention", "magnitude", "seed"])
    for seed in (0, 1):
        weak, strong = runs.loc[("weight_noise", 0.1, seed)], runs.loc[("weight_noise", 3.0, seed)]
        assert weak["area"] < strong["area"] and weak["drawdown"] <= strong["drawdown"]
        assert not weak["collapsed"]
        assert runs.loc[("lr_shock", 1000.0, seed), "collapsed"]


def test_duration_override_and_held_stabilizers(tmp_path: Path) -> None:
    plan = tiny_plan(
        interventions=[
            {"name": "lr_shock", "magnitudes": [10], "duration": 7},
            {"name": "weight_noise", "magnitudes": [0.1], "duration": 2},
        ],
        stabilizers=[{"name": "grad_clip", "magnitude": 0.5}],
        seeds=[0],
    )
    store = run_audit(plan, tmp_path, progress=False)
    runs = store.runs().set_index("intervention")
    shock = by_run(store, runs.loc["lr_shock"])
    np.testing.assert_allclose(shock["knob.lr_scale"][:7], 10.0, rtol=1e-6)
    assert (shock["knob.lr_scale"][7:] == 1.0).all()
    noise = by_run(store, runs.loc["weight_noise"])
    assert [a.count("weight_noise") for a in noise["applied"]] == [1, 1] + [0] * (HORIZON - 2)
    for name in (BASELINE, "lr_shock", "weight_noise"):
        steps = by_run(store, runs.loc[name])
        held = steps[steps["step"] >= 1]
        np.testing.assert_allclose(held["knob.grad_clip"], 0.5, rtol=1e-6)
        assert held["applied"].str.contains("grad_clip=").all()


def test_runs_on_raw_telemetry_observations_store_no_deviation(tmp_path: Path) -> None:
    # Without a meta-state encoder the env reports no deviation scores (None in info).
    plan = tiny_plan(env_kwargs={"observation": "telemetry"}, seeds=[0])
    store = run_audit(plan, tmp_path, progress=False)
    assert len(store.runs()) == 5
    steps = store.steps()
    assert "deviation" not in steps and "self_deviation" not in steps
    width = len(gym.make("trainenv/Digits-MLP-v0").unwrapped.trainer.channels) + 1
    assert {len(o) for o in steps["observation"]} == {width}


def test_a_recipe_that_collapses_before_the_onset_is_recorded(tmp_path: Path) -> None:
    plan = tiny_plan(env_kwargs={"trainer_kwargs": {"lr": 1e30}}, seeds=[0])
    runs = run_audit(plan, tmp_path, progress=False).runs().set_index("kind")
    assert (runs["status"] == "prefix_collapsed").all() and len(runs) == 5
    assert runs.loc["baseline", "collapse_reason"] == "non-finite"
    assert runs.loc["perturbed", "drawdown"].isna().all()
    with pytest.raises(ValueError, match="every unperturbed run collapsed before its onset"):
        summarize(runs.reset_index())


def test_rerun_skips_finished_runs_and_redoes_missing_ones(tmp_path: Path) -> None:
    plan = tiny_plan(seeds=[0])
    # flush_seconds=0: a batch file per run, so that single runs can go missing
    first = run_audit(plan, tmp_path, progress=False, flush_seconds=0).runs().set_index("run_id")
    written: list[str] = []
    run_audit(plan, tmp_path, progress=False, on_record=lambda r: written.append(r.run_id))
    assert written == []

    lost = [
        first.index[first["kind"] == "baseline"][0],
        first.index[first["kind"] != "baseline"][0],
    ]
    batch = {pd.read_parquet(p)["run_id"].item(): p for p in (tmp_path / "runs").glob("*")}
    for run_id in lost:
        batch[run_id].unlink()  # as if killed before the row
    (tmp_path / "runs" / ".x.parquet.tmp").write_text("half a file")
    store = run_audit(plan, tmp_path, progress=False, on_record=lambda r: written.append(r.run_id))
    assert sorted(written) == sorted(lost)
    assert not list((tmp_path / "runs").glob(".*"))
    again = store.runs().set_index("run_id").sort_index()
    assert again.index.is_unique and not store.steps().duplicated(["run_id", "step"]).any()
    columns = ["drawdown", "recovery_time", "collapsed", "area", "final_gap"]
    pd.testing.assert_frame_equal(again[columns], first.sort_index()[columns])


def test_groups_and_run_ids_are_deterministic() -> None:
    groups = plan_groups(tiny_plan())
    assert len(groups) == 2 and all(g.n_runs == 5 for g in groups)
    assert [g.baseline_id for g in groups] == [g.baseline_id for g in plan_groups(tiny_plan())]
    ids = {p.run_id for g in groups for p in g.perturbations}
    assert len(ids) == 8
    finished = {groups[0].baseline_id, *(p.run_id for p in groups[0].perturbations)}
    (left,) = plan_groups(tiny_plan(), finished)
    assert left.seed == groups[1].seed
    other = plan_groups(tiny_plan(tolerance=0.1))
    assert other[0].baseline_id == groups[0].baseline_id  # the tolerance leaves branches alone
    assert {p.run_id for g in other for p in g.perturbations}.isdisjoint(ids)
