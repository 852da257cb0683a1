"""Summaries on a synthetic runs table with known margins, and the tables they print."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from trainenv.audit.formatting import format_table
from trainenv.audit.summary import format_summary, summarize
from trainenv.core import interventions as registry

SEEDS = (0, 1, 2, 3)


def runs_table(
    collapses: dict[str, dict[float, tuple[int, ...]]],
    recipe: str = "R",
    seeds: tuple[int, ...] = SEEDS,
) -> pd.DataFrame:
    """Runs where ``collapses[name][magnitude]`` lists the seeds that collapse; a collapsed run
    has drawdown 0.5, the others 0.1. Baseline seed 3 collapses on its own."""
    rows = [
        {
            "run_id": f"{recipe}-b{s}",
            "kind": "baseline",
            "status": "ok",
            "recipe": recipe,
            "seed": s,
            "onset": 5,
            "collapsed": s == 3,
        }
        for s in seeds
    ]
    for name, grid in collapses.items():
        intervention = registry.get(name)
        for magnitude, collapsed in grid.items():
            for s in seeds:
                c = s in collapsed
                rows.append(
                    {
                        "run_id": f"{recipe}-{name}-{magnitude}-{s}",
                        "kind": "perturbed",
                        "status": "ok",
                        "recipe": recipe,
                        "intervention": name,
                        "dimension": intervention.dimension.value,
                        "log_scale": intervention.log_scale,
                        "magnitude": magnitude,
                        "seed": s,
                        "onset": 5,
                        "collapsed": c,
                        "drawdown": 0.5 if c else 0.1,
                        "area": 0.2 if c else 0.0,
                        "final_gap": 0.3 if c else 0.0,
                        "recovery_time": math.inf if c else 2.0,
                    }
                )
    return pd.DataFrame(rows)


ALL = (0, 1, 2, 3)
RUNS = runs_table(
    {
        "lr_shock": {10.0: (), 100.0: (0,), 1000.0: ALL},  # rate 0, 1/4, 1
        "batch_shrink": {2.0: (), 8.0: ALL, 32.0: ALL},  # rate 0, 1, 1
        "input_noise": {0.1: (), 1.0: ()},  # never collapses
        "weight_noise": {0.5: (0, 1, 2), 3.0: ALL},  # collapses from the start
    }
)


@pytest.fixture(scope="module")
def summary():  # type: ignore[no-untyped-def]
    return summarize(RUNS, n_boot=300)


def test_margins_match_the_formula(summary) -> None:  # type: ignore[no-untyped-def]
    m = summary.margins.set_index("intervention")
    # lr_shock: rate 1/4 at 100 and 1 at 1000: 1/2 is reached a third of the way (geometric)
    assert m.loc["lr_shock", "margin"] == pytest.approx(100 * 10 ** (1 / 3))
    assert m.loc["batch_shrink", "margin"] == pytest.approx(4.0)  # geometric midpoint of 2, 8
    assert m.loc["input_noise", ["margin", "censored"]].tolist() == [1.0, "above"]
    assert m.loc["weight_noise", ["margin", "censored"]].tolist() == [0.5, "below"]
    shock = m.loc["lr_shock"]
    assert shock["margin_lo"] <= shock["margin"] <= shock["margin_hi"]
    assert shock["margin_lo"] < shock["margin_hi"]  # seeds disagree at 100: a real interval
    assert m.loc["batch_shrink", "margin_lo"] == m.loc["batch_shrink", "margin_hi"] == 4.0


def test_profile_takes_each_dimensions_weakest_intervention(summary) -> None:  # type: ignore[no-untyped-def]
    p = summary.profile.set_index("dimension")
    assert list(p.index) == ["optimization", "data", "parametric"]  # signal: not tested
    position = registry.get("batch_shrink").position(4.0)
    assert p.loc["optimization", "limiting"] == "batch_shrink"
    assert p.loc["optimization", "position"] == pytest.approx(position)
    assert p.loc["data", ["position", "censored"]].tolist() == [
        pytest.approx(registry.get("input_noise").position(1.0)),
        "above",
    ]
    assert p.loc["parametric", "censored"] == "below"


def test_per_magnitude_table(summary) -> None:  # type: ignore[no-untyped-def]
    t = summary.table.set_index(["intervention", "magnitude"])
    row = t.loc[("lr_shock", 100.0)]
    assert row["n"] == 4 and row["collapse_rate"] == 0.25
    assert row["drawdown"] == pytest.approx(0.2)  # (0.5 + 3 * 0.1) / 4
    assert row["drawdown_lo"] <= 0.2 <= row["drawdown_hi"]
    assert row["recovery_time"] == 2.0 and math.isinf(t.loc[("lr_shock", 1000.0), "recovery_time"])
    assert summary.baselines.set_index("recipe").loc["R"].tolist() == [4, 1]


def test_onsets_are_averaged_within_a_seed() -> None:
    early = runs_table({"lr_shock": {10.0: (), 100.0: ALL}})
    late = runs_table({"lr_shock": {10.0: (), 100.0: ()}})
    late["onset"], late["run_id"] = 9, late["run_id"] + "-late"
    both = pd.concat([early, late], ignore_index=True)
    t = summarize(both, n_boot=50).table.set_index("magnitude")
    assert t.loc[100.0, "collapse_rate"] == 0.5 and t.loc[100.0, "n"] == 8


def test_terminal_summary_lists_profile_margins_and_lone_collapses(summary) -> None:  # type: ignore[no-untyped-def]
    text = format_summary(summary)
    assert "not tested" in text and ">=1" in text and "<0.5" in text
    assert "lr_shock" in text and "10:0/4 100:1/4 1000:4/4" in text
    assert "1/4 unperturbed runs of R collapsed on their own" in text


def test_format_table_aligns_and_renders_markdown() -> None:
    text = format_table(["a", "bb"], [["1", "2"], ["333", "4"]], markdown=False)
    assert text.splitlines() == ["a    bb", "---  --", "1    2", "333  4"]
    md = format_table(["a"], [["x"]], markdown=True)
    assert md.splitlines() == ["| a |", "| - |", "| x |"]


def test_an_empty_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no finished runs"):
        summarize(pd.DataFrame())


# -- trajectory figures ----------------------------------------------------------------------
def test_every_run_counted_as_collapsed_is_marked_with_its_rule(tmp_path) -> None:
    """A store with one seed and onset: the unperturbed run at p = 0.8, a perturbed run that
    recovers, one that never gets back (no env collapse: counted by the no-recovery rule) and
    one the env's collapse rule ends."""
    from trainenv.audit.metrics import run_metrics
    from trainenv.audit.report import plot_trajectories
    from trainenv.audit.store import ResultStore, RunRecord

    onset, horizon, tolerance = 3, 6, 0.1
    base_p = [0.8] * horizon
    curves = {  # magnitude: (p after the onset, the env's collapse reason)
        2.0: ([0.5, 0.7, 0.8, 0.8, 0.8, 0.8], None),  # back within the tolerance
        8.0: ([0.4, 0.3, 0.3, 0.3, 0.3, 0.3], None),  # never back, never terminated
        32.0: ([0.2, 0.0], "non-finite loss"),  # terminated at its 2nd step
    }
    keys = {"recipe": "R", "seed": 0, "onset": onset, "horizon": horizon, "tolerance": tolerance}
    records = [
        RunRecord(
            {**keys, "run_id": "base", "kind": "baseline", "status": "ok", "collapsed": False},
            [{"run_id": "base", "step": t, "p": 0.8} for t in range(onset + horizon + 1)],
        )
    ]
    for magnitude, (p, reason) in curves.items():
        padded = p + [0.0] * (horizon - len(p))  # a terminated branch counts as lost
        metrics = run_metrics(base_p, padded, tolerance, env_collapsed=reason is not None)
        rid = f"shock-{magnitude:g}"
        row = {
            **keys, "run_id": rid, "kind": "perturbed", "status": "ok",
            "intervention": "lr_shock", "dimension": "optimization", "log_scale": True,
            "magnitude": magnitude, "duration": 1, "collapse_reason": reason, **vars(metrics),
        }  # fmt: skip
        steps = [{"run_id": rid, "step": onset + h, "p": v} for h, v in enumerate(p, 1)]
        records.append(RunRecord(row, steps))
    with ResultStore(tmp_path) as store:
        for record in records:
            store.write(record)
    runs = store.runs()
    counted = runs[runs["kind"] == "perturbed"].set_index("magnitude")["collapsed"]
    assert counted.to_dict() == {2.0: False, 8.0: True, 32.0: True}

    markers = plot_trajectories(store, runs, "R", tmp_path / "t.png")
    assert (tmp_path / "t.png").exists()
    by = {m.magnitude: m for m in markers}
    assert set(by) == {8.0, 32.0}  # every collapsed run, and only those
    assert (by[8.0].rule, by[8.0].step, by[8.0].p) == ("no recovery", onset + horizon, 0.3)
    assert (by[32.0].rule, by[32.0].step, by[32.0].p) == ("env collapse", onset + 2, 0.0)
