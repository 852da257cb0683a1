"""The statistics and verdict rules of ``trainenv findings`` on synthetic data with known
answers, and the quick findings run end to end."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

import trainenv.warning as ew
from trainenv import cli
from trainenv.audit import findings as F
from trainenv.audit.store import ResultStore, RunRecord


# -- claim 1 ------------------------------------------------------------------------------------
def test_rank_correlation_of_a_monotone_relation_is_one_with_a_degenerate_ci() -> None:
    x = np.linspace(0.1, 0.9, 8)[:, None] + np.zeros((8, 3))
    assert F.rank_correlation(x, x**2, n_boot=200) == pytest.approx((1.0, 1.0, 1.0))
    assert F.rank_correlation(x, -x, n_boot=200) == pytest.approx((-1.0, -1.0, -1.0))


def test_rank_correlation_recovers_a_planted_correlation_within_its_ci() -> None:
    """Recipes drawn from a Gaussian copula with correlation r have Spearman's rho
    6/pi asin(r/2) (0.585 for r = 0.6); seeds add small noise to each recipe."""
    rng = np.random.default_rng(0)
    latent = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=80)
    perf = latent[:, :1] + 0.05 * rng.standard_normal((80, 4))
    stab = latent[:, 1:] + 0.05 * rng.standard_normal((80, 4))
    rho, lo, hi = F.rank_correlation(perf, stab, n_boot=400)
    truth = 6 / math.pi * math.asin(0.3)
    assert lo < truth < hi and lo > 0.3 and hi - lo < 0.5
    assert lo < rho < hi


def test_rank_correlation_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="recipes >= 3"):
        F.rank_correlation(np.zeros((2, 3)), np.zeros((2, 3)))


def audit_store(tmp_path, drawdowns: dict[tuple[str, int], list[float]]) -> ResultStore:
    """A results store in the runner's layout: per recipe and seed, an unperturbed run whose
    p climbs to 0.8 (its last step; best 0.8 in the horizon after onset 2) and perturbed
    runs with the given drawdowns."""
    store = ResultStore(tmp_path)
    store.prepare()
    for (recipe, seed), values in drawdowns.items():
        base_id = f"{recipe}-{seed}-base"
        steps = [{"run_id": base_id, "step": t, "p": p}
                 for t, p in enumerate([0.0, 0.3, 0.5, 0.6, 0.8])]  # fmt: skip
        keys = {"recipe": recipe, "seed": seed, "status": "ok", "onset": 2}
        store.write(RunRecord({**keys, "run_id": base_id, "kind": "baseline",
                               "collapsed": False}, steps))  # fmt: skip
        for i, value in enumerate(values):
            row = {**keys, "run_id": f"{base_id}-{i}", "kind": "perturbed", "drawdown": value,
                   "collapsed": value > 0.5, "intervention": "lr_shock",
                   "magnitude": 10.0 * i}  # fmt: skip
            store.write(RunRecord(row, []))
    return store


def test_recipe_outcomes_score_final_performance_and_relative_drawdown(tmp_path) -> None:
    store = audit_store(tmp_path, {("a", 0): [0.4, 0.08], ("b", 0): [0.8, 0.8]})
    outcomes = F.recipe_outcomes(store, ["a", "b"], onset=2).set_index("recipe")
    assert outcomes.loc["a", "final_p"] == pytest.approx(0.8)
    # Relative drawdowns 0.4 / 0.8 = 0.5 and 0.1: stability 1 - 0.3.
    assert outcomes.loc["a", "stability"] == pytest.approx(0.7)
    assert outcomes.loc["b", "stability"] == pytest.approx(0.0)


def test_decoupling_names_the_recipes_best_on_one_measure_only(tmp_path) -> None:
    rows = []
    for i, name in enumerate("abcdef"):
        for seed in range(3):  # performance rises with i; stability peaks in the middle
            rows.append({"recipe": name, "seed": seed, "final_p": 0.1 * i,
                         "stability": 1 - abs(i - 2.5) / 3})  # fmt: skip
    result = F.decoupling(pd.DataFrame(rows), n_boot=200)
    assert result.recipes["recipe"].iloc[0] == "f"  # best performance, stability rank 5 of 6
    # c: performance rank 4, stability rank 1 (tied with d, which is in the top half on both).
    assert result.discordant == ["c", "f"]
    assert result.verdict == F.verdict_decoupling(result.lo, result.hi)


# -- claim 2 ------------------------------------------------------------------------------------
def test_paired_effect_recovers_a_planted_reduction() -> None:
    rng = np.random.default_rng(3)
    seeds = np.repeat(np.arange(8), 6)
    differences = -0.1 + 0.03 * rng.standard_normal(len(seeds))
    effect = F.paired_effect(differences, seeds, n_boot=400)
    assert effect["mean_lo"] < -0.1 < effect["mean_hi"] < 0
    assert effect["d_z"] == pytest.approx(-0.1 / 0.03, rel=0.3) and effect["d_z_hi"] < 0
    assert effect["pairs"] == 48


def test_paired_differences_match_runs_by_seed_and_perturbation() -> None:
    runs = pd.DataFrame({
        "recipe": ["x", "x", "x+noise", "x+noise", "x+noise"],
        "kind": ["perturbed"] * 5, "status": ["ok"] * 5,
        "seed": [0, 1, 0, 1, 2], "onset": [5] * 5,
        "intervention": ["lr_shock"] * 5, "magnitude": [10.0] * 5,
        "drawdown": [0.5, 0.2, 0.3, 0.2, 0.9], "collapsed": [True, False, False, False, True],
    })  # fmt: skip
    pairs = F.paired_differences(runs, "x", "x+noise")
    assert list(pairs["seed"]) == [0, 1]  # seed 2 has no partner
    np.testing.assert_allclose(pairs["d_drawdown"], [-0.2, 0.0])
    np.testing.assert_allclose(pairs["d_collapsed"], [-1.0, 0.0])


# -- verdict rules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lo", "hi", "verdict"),
    [(-0.3, 0.4, F.SUPPORTED), (0.55, 0.9, F.NOT_SUPPORTED), (-0.95, -0.6, F.NOT_SUPPORTED),
     (0.2, 0.8, F.INCONCLUSIVE), (math.nan, 0.1, F.INCONCLUSIVE)],
)  # fmt: skip
def test_decoupling_rule(lo: float, hi: float, verdict: str) -> None:
    assert F.verdict_decoupling(lo, hi) == verdict


@pytest.mark.parametrize(
    ("lo", "hi", "verdict"),
    [(-0.2, -0.05, F.SUPPORTED), (0.01, 0.2, F.NOT_SUPPORTED), (-0.01, 0.015, F.NOT_SUPPORTED),
     (-0.015, -0.005, F.NOT_SUPPORTED), (-0.2, 0.1, F.INCONCLUSIVE)],
)  # fmt: skip
def test_buffering_rule(lo: float, hi: float, verdict: str) -> None:
    assert F.verdict_buffering(lo, hi) == verdict


def warning_row(**changes: float) -> dict[str, float]:
    row = {"collapses": 10, "detected": 8, "auroc_lo": 0.7, "auroc_hi": 0.9,
           "detection_rate_lo": 0.6, "detection_rate_hi": 0.9, "lead_median_lo": 10.0,
           "lead_median_hi": 40.0}  # fmt: skip
    return {**row, **changes}


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [({}, F.SUPPORTED), ({"collapses": 4}, F.INCONCLUSIVE), ({"detected": 0}, F.NOT_SUPPORTED),
     ({"auroc_lo": 0.3, "auroc_hi": 0.45}, F.NOT_SUPPORTED),
     ({"lead_median_lo": 0.0, "lead_median_hi": 0.0}, F.NOT_SUPPORTED),
     ({"detection_rate_lo": 0.3}, F.INCONCLUSIVE), ({"auroc_lo": 0.45}, F.INCONCLUSIVE)],
)  # fmt: skip
def test_early_warning_rule(changes: dict[str, float], verdict: str) -> None:
    assert F.verdict_warning(warning_row(**changes)) == verdict


def test_overall_verdict_needs_agreement() -> None:
    assert F.overall([F.SUPPORTED, F.SUPPORTED]) == F.SUPPORTED
    assert F.overall([F.SUPPORTED, F.NOT_SUPPORTED]) == F.INCONCLUSIVE
    assert F.overall([]) == F.INCONCLUSIVE


# -- the quick run ------------------------------------------------------------------------------
def reported_verdicts(report: str) -> dict[int, dict[str, str]]:
    """The per-paradigm verdicts in the report's verdict table."""
    out = {}
    for claim in (1, 2, 3):
        row = next(line for line in report.splitlines() if line.startswith(f"| {claim}. "))
        cell = row.split("|")[2]
        out[claim] = dict(re.findall(r"(\w+): (supported|not supported|inconclusive)", cell))
    return out


@pytest.mark.slow
def test_quick_findings_report_verdicts_that_follow_from_its_data(tmp_path) -> None:
    """``trainenv findings --quick`` writes the report, figures and data; every verdict in the
    report is recomputed here from the data files by the rules."""
    assert cli.main(["findings", "--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    for claim in (1, 2, 3):
        assert F.CLAIMS[claim] in text and F.RULES[claim] in text
    for figure in ("claim1_decoupling.png", "claim2_stochasticity.png", "claim3_detectors.png"):
        assert (tmp_path / figure).stat().st_size > 0 and f"({figure})" in text
    reported = reported_verdicts(text)
    n_boot, data = F.quick_config().n_boot, tmp_path / "data"

    outcomes = pd.read_csv(data / "claim1_outcomes.csv")
    assert list(outcomes["paradigm"].unique()) == ["supervised"]
    assert outcomes["recipe"].nunique() == 9 and outcomes["final_p"].between(0, 1).all()
    claim1 = F.decoupling(outcomes.drop(columns="paradigm"), n_boot)
    assert reported[1] == {"supervised": claim1.verdict}

    pairs = pd.read_csv(data / "claim2_pairs.csv")
    effect = F.paired_effect(pairs["d_drawdown"].to_numpy(), pairs["seed"].to_numpy(), n_boot)
    assert reported[2] == {"supervised": F.verdict_buffering(effect["mean_lo"], effect["mean_hi"])}

    detectors = pd.read_csv(data / "claim3_detectors.csv")
    assert set(detectors["detector"]) == set(ew.DETECTORS) and (detectors["collapses"] > 0).all()
    assert detectors["false_alarm_rate"].between(0, 0.2).all()
    claim3 = {
        paradigm: F.verdict_warning(rows.set_index("detector").loc[ew.PRIMARY])
        for paradigm, rows in detectors.groupby("paradigm")
    }
    assert reported[3] == claim3 and set(claim3) == {"supervised", "RL", "LM"}

    # A rerun into the same directory resumes: no run is redone, the verdicts are the same.
    runs = [f for sub in ("claim3", "audits") for f in (tmp_path / sub).rglob("*.parquet")]
    saved = {f: f.stat().st_mtime_ns for f in runs}
    assert len(list((tmp_path / "claim3" / "runs").glob("*.parquet"))) == 6 * 7 + 4 * 3 + 3 * 3
    assert cli.main(["findings", "--quick", "--out", str(tmp_path)]) == 0
    assert {f: f.stat().st_mtime_ns for f in saved} == saved
    assert reported_verdicts((tmp_path / "report.md").read_text()) == reported
