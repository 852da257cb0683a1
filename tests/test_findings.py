"""The statistics and verdict rules of ``trainenv findings`` on synthetic data with known
answers, the settings file and its run ids, and the quick findings run end to end."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pandas as pd
import pytest

import trainenv.findings.claims as F
from tests.helpers import markdown_tables
from tests.test_early_warning import synthetic_traces
from trainenv import cli
from trainenv.audit.plan import AuditPlan, InterventionGrid, Recipe, Stabilizer
from trainenv.audit.runner import plan_groups, run_audit
from trainenv.audit.store import ResultStore, RunRecord
from trainenv.findings.config import (
    CONFIG_FILE,
    Paradigm,
    StochasticityKnob,
    full_config,
    load_config,
    quick_config,
)
from trainenv.findings.dose import Stochasticity, dose_response, trend
from trainenv.findings.report import CLAIMS, PAPER, write_findings
from trainenv.findings.sampling import SampleSizeRule, grow_seeds
from trainenv.findings.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    RULES,
    SUPPORTED,
    overall,
    verdict_buffering,
    verdict_decoupling,
    verdict_dose,
    verdict_warning,
)
from trainenv.warning.evaluation import PRIMARY
from trainenv.warning.simulation import task_id


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
    assert result.rho == pytest.approx(0.0)  # stability is symmetric in the performance rank


def planted_outcomes(recipes: int, stability: np.ndarray, seeds: int = 3) -> pd.DataFrame:
    """Per recipe i and seed: final_p = i / recipes (plus seed noise), the given stability."""
    rng = np.random.default_rng(1)
    return pd.DataFrame([
        {"recipe": f"planted r{i:02d}", "seed": seed, "final_p": i / recipes + 0.001 * rng.random(),
         "stability": stability[i]}
        for i in range(recipes) for seed in range(seeds)
    ])  # fmt: skip


def test_decoupling_verdicts_of_planted_relations() -> None:
    # Stability rising with performance: rho = 1 in every resample, so not decoupled.
    coupled = F.decoupling(planted_outcomes(8, np.linspace(0.2, 0.9, 8)), n_boot=200)
    assert (coupled.rho, coupled.lo, coupled.hi) == pytest.approx((1.0, 1.0, 1.0))
    assert coupled.verdict == NOT_SUPPORTED
    # Stability drawn independently of performance for 80 recipes: the CI sits near 0.
    independent = np.random.default_rng(2).random(80)
    decoupled = F.decoupling(planted_outcomes(80, independent), n_boot=200)
    assert -0.5 < decoupled.lo < 0 < decoupled.hi < 0.5
    assert decoupled.verdict == SUPPORTED


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


def planted_pairs(effect: float, seeds: int = 8, per_seed: int = 4) -> pd.DataFrame:
    """Perturbed runs of recipes "x" and "x+noise" whose drawdowns differ by ``effect``."""
    rng = np.random.default_rng(4)
    rows = []
    for seed in range(seeds):
        for m in range(per_seed):
            drawdown = 0.3 + 0.05 * rng.standard_normal()
            for recipe, value in (("x", drawdown), ("x+noise", drawdown + effect)):
                rows.append({"recipe": recipe, "kind": "perturbed", "status": "ok",
                             "seed": seed, "onset": 5, "intervention": "lr_shock",
                             "magnitude": float(m), "drawdown": value,
                             "collapsed": value > 0.5})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("effect", "verdict"),
    [(-0.1, SUPPORTED), (0.1, NOT_SUPPORTED), (0.0, NOT_SUPPORTED)],  # 0: immaterial
)
def test_buffering_verdicts_of_planted_effects(effect: float, verdict: str) -> None:
    result = F.buffering(planted_pairs(effect), "x", "x+noise", n_boot=200)
    assert result.drawdown["mean"] == pytest.approx(effect, abs=1e-12)
    assert result.verdict == verdict


def planted_dose(
    effects: list[float], seeds: int = 8, noise: float = 0.01, rng_seed: int = 5
) -> pd.DataFrame:
    """Perturbed runs of recipe "x" and of "x+noise=L" at levels 1, 2, 3 (common random numbers:
    the same seeds and perturbations), whose drawdowns differ from x's by ``effects[L - 1]``
    plus per-pair noise."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in range(seeds):
        for m in range(4):
            drawdown = 0.3 + 0.05 * rng.standard_normal()
            sides = [("x", drawdown)] + [
                (f"x+noise={level}", drawdown + effect + noise * rng.standard_normal())
                for level, effect in enumerate(effects, start=1)
            ]
            for recipe, value in sides:
                rows.append({"recipe": recipe, "kind": "perturbed", "status": "ok",
                             "seed": seed, "onset": 5, "intervention": "lr_shock",
                             "magnitude": float(m), "drawdown": value,
                             "collapsed": value > 0.5})  # fmt: skip
    return pd.DataFrame(rows)


def planted_stochasticity(effects: list[float], **kwargs) -> Stochasticity:
    runs = planted_dose(effects, **kwargs)
    levels = {float(level): f"x+noise={level}" for level in range(1, len(effects) + 1)}
    return Stochasticity((dose_response(runs, "x", levels, "grad_noise", n_boot=200),))


@pytest.mark.parametrize(
    ("effects", "noise", "verdict"),
    [([-0.05, -0.1, -0.15], 0.01, SUPPORTED),  # more noise, smaller drawdowns
     ([0.0, 0.0, 0.0], 0.002, NOT_SUPPORTED),  # no trend, no level buffers
     ([0.05, 0.1, 0.15], 0.01, NOT_SUPPORTED),  # the wrong direction
     ([-0.01, 0.0, 0.01], 0.3, INCONCLUSIVE)],  # too noisy to tell
)  # fmt: skip
def test_dose_response_verdicts_of_planted_trends(
    effects: list[float], noise: float, verdict: str
) -> None:
    result = planted_stochasticity(effects, noise=noise, rng_seed=7).primary
    assert result.levels == (1.0, 2.0, 3.0)
    for effect, level in zip(effects, result.effects):
        assert level.drawdown["mean"] == pytest.approx(effect, abs=4 * noise)
    if noise < 0.1:  # slope of (0, e1, e2, e3) against ranks (0, 1, 2, 3)
        expected = np.polyfit([0, 1, 2, 3], [0, *effects], 1)[0]
        assert result.slope == pytest.approx(expected, abs=2 * noise)
        assert result.slope_lo <= result.slope <= result.slope_hi
    assert result.verdict == verdict
    assert set(result.pairs["level"]) == {1.0, 2.0, 3.0}


def test_trend_needs_two_levels_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match="level rank"):
        trend(np.zeros(4), np.zeros(4), np.ones(4), n_boot=10)
    with pytest.raises(ValueError, match="level rank"):
        trend(np.zeros(4), np.zeros(3), np.array([1, 2, 1, 2]), n_boot=10)


@pytest.mark.parametrize(
    ("lo", "hi", "levels", "verdict"),
    [(-0.05, -0.01, [INCONCLUSIVE, SUPPORTED], SUPPORTED),
     (-0.05, -0.01, [INCONCLUSIVE, INCONCLUSIVE], INCONCLUSIVE),  # a trend, no level buffers
     (0.01, 0.05, [NOT_SUPPORTED, INCONCLUSIVE], NOT_SUPPORTED),  # the wrong direction
     (-0.01, 0.01, [NOT_SUPPORTED, NOT_SUPPORTED], NOT_SUPPORTED),  # no material trend
     (0.01, 0.05, [SUPPORTED, NOT_SUPPORTED], INCONCLUSIVE),  # buffers at a low level only
     (-0.05, 0.01, [SUPPORTED], INCONCLUSIVE), (math.nan, 0.1, [SUPPORTED], INCONCLUSIVE)],
)  # fmt: skip
def test_dose_response_rule(lo: float, hi: float, levels: list[str], verdict: str) -> None:
    assert verdict_dose(lo, hi, levels, seeds=8) == verdict
    assert verdict_dose(lo, hi, levels, seeds=4) == INCONCLUSIVE  # too few seeds to tell


# -- the sample-size rule -----------------------------------------------------------------------
def test_the_sample_size_rule_stops_when_the_width_targets_are_met() -> None:
    rule = SampleSizeRule(start=8, step=8, cap=64, rho_ci_width=0.5, trend_ci_width=0.04)
    widths = {8: {"rho": 0.9, "trend": 0.03}, 16: {"rho": 0.6, "trend": 0.05},
              24: {"rho": 0.45, "trend": 0.035}, 32: {"rho": 0.1, "trend": 0.01}}  # fmt: skip
    asked = []

    def measure(n: int) -> dict[str, float]:
        asked.append(n)
        return widths[n]

    course = grow_seeds(rule, measure)
    assert asked == [8, 16, 24] and course.seeds == 24 and course.met
    assert "every target met" in course.describe()


def test_the_sample_size_rule_stops_at_its_cap() -> None:
    rule = SampleSizeRule(start=4, step=8, cap=16, rho_ci_width=0.5)
    asked = []

    def measure(n: int) -> dict[str, float]:
        asked.append(n)
        return {"rho": math.inf}  # never computable: never met

    course = grow_seeds(rule, measure)
    assert asked == [4, 12, 16] and course.seeds == 16 and not course.met
    assert "cap reached" in course.describe()
    fixed = SampleSizeRule(start=4, cap=4, rho_ci_width=0.5)
    assert grow_seeds(fixed, measure).seeds == 4 and "fixed" in fixed.describe()
    untargeted = grow_seeds(SampleSizeRule(start=2, cap=2), lambda n: {"rho": 2.0})
    assert "no target: a fixed sample size" in untargeted.describe()


def test_early_warning_verdict_of_a_detector_that_warns_every_collapse() -> None:
    result = F.early_warning(synthetic_traces(lead=4), horizon=4, false_alarm_rate=0.05,
                             n_boot=200)  # fmt: skip
    assert result.primary["detection_rate"] == 1.0 and result.verdict == SUPPORTED


# -- verdict rules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lo", "hi", "verdict"),
    [(-0.3, 0.4, SUPPORTED), (0.55, 0.9, NOT_SUPPORTED), (-0.95, -0.6, NOT_SUPPORTED),
     (0.2, 0.8, INCONCLUSIVE), (math.nan, 0.1, INCONCLUSIVE)],
)  # fmt: skip
def test_decoupling_rule(lo: float, hi: float, verdict: str) -> None:
    assert verdict_decoupling(lo, hi) == verdict


@pytest.mark.parametrize(
    ("lo", "hi", "verdict"),
    [(-0.2, -0.05, SUPPORTED), (0.01, 0.2, NOT_SUPPORTED), (-0.01, 0.015, NOT_SUPPORTED),
     (-0.015, -0.005, NOT_SUPPORTED), (-0.2, 0.1, INCONCLUSIVE)],
)  # fmt: skip
def test_buffering_rule(lo: float, hi: float, verdict: str) -> None:
    assert verdict_buffering(lo, hi) == verdict


def warning_row(**changes: float) -> dict[str, float]:
    row = {"collapses": 10, "detected": 8, "auroc_lo": 0.7, "auroc_hi": 0.9,
           "detection_rate_lo": 0.6, "detection_rate_hi": 0.9, "lead_median_lo": 10.0,
           "lead_median_hi": 40.0}  # fmt: skip
    return {**row, **changes}


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [({}, SUPPORTED), ({"collapses": 4}, INCONCLUSIVE), ({"detected": 0}, NOT_SUPPORTED),
     ({"auroc_lo": 0.3, "auroc_hi": 0.45}, NOT_SUPPORTED),
     ({"lead_median_lo": 0.0, "lead_median_hi": 0.0}, NOT_SUPPORTED),
     ({"detection_rate_lo": 0.3}, INCONCLUSIVE), ({"auroc_lo": 0.45}, INCONCLUSIVE)],
)  # fmt: skip
def test_early_warning_rule(changes: dict[str, float], verdict: str) -> None:
    assert verdict_warning(warning_row(**changes)) == verdict


def test_overall_verdict_needs_agreement() -> None:
    assert overall([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert overall([SUPPORTED, NOT_SUPPORTED]) == INCONCLUSIVE
    assert overall([]) == INCONCLUSIVE


# -- the quick run ------------------------------------------------------------------------------
def report_tables(report: str) -> dict[str, list[list[str]]]:
    """The report's tables by the first cell of their header row."""
    return {table[0][0]: table for table in markdown_tables(report)}


def reported_verdicts(report: str) -> dict[int, dict[str, str]]:
    """The per-paradigm verdicts in the report's verdict table."""
    rows = report_tables(report)["claim"][1:]
    return {
        int(row[0].split(".")[0]): dict(
            re.findall(r"(\w+): (supported|not supported|inconclusive)", row[1])
        )
        for row in rows
    }


def test_a_report_shows_the_verdicts_its_results_hold(tmp_path) -> None:
    """The report's verdict table, and each claim's section, state the planted results'
    verdicts; the overall verdict is the paradigms' common one."""
    config = quick_config()
    findings = F.Findings(config, wall_s=60.0)
    findings.decoupling["supervised"] = F.decoupling(
        planted_outcomes(8, np.linspace(0.2, 0.9, 8)), n_boot=100
    )
    findings.buffering["supervised"] = planted_stochasticity([-0.05, -0.1, -0.15])
    for paradigm in ("supervised", "RL"):
        findings.warning[paradigm] = F.early_warning(synthetic_traces(lead=4), 4, 0.05, 100)
    findings.warning["LM"] = F.early_warning(synthetic_traces(lead=4), 4, 0.05, 100)
    findings.warning["LM"].verdict = NOT_SUPPORTED  # a paradigm that disagrees
    text = write_findings(findings, tmp_path).read_text()
    assert reported_verdicts(text) == {
        1: {"supervised": NOT_SUPPORTED},
        2: {"supervised": SUPPORTED},
        3: {"supervised": SUPPORTED, "RL": SUPPORTED, "LM": NOT_SUPPORTED},
    }
    assert "Verdict (LM): **not supported**." in text
    tables = report_tables(text)
    assert [row[2] for row in tables["claim"][1:]] == [NOT_SUPPORTED, SUPPORTED, INCONCLUSIVE]
    # The comparison: a row per claim and paradigm, the paper's statement on a claim's first.
    rows = tables["the paper says"][1:]
    assert [row[1:3] for row in rows] == [
        ["supervised", NOT_SUPPORTED], ["supervised", SUPPORTED], ["supervised", SUPPORTED],
        ["RL", SUPPORTED], ["LM", NOT_SUPPORTED],
    ]  # fmt: skip
    assert [row[0] for row in rows] == [f'1. "{PAPER[1]}"', f'2. "{PAPER[2]}"',
                                        f'3. "{PAPER[3]}"', "", ""]  # fmt: skip
    assert rows[0][3] == "rho +1.00 [+1.00, +1.00]"  # the planted perfect coupling
    assert rows[1][3].startswith("grad_noise trend -0.05")
    assert "drawdown difference at 1: -0.05" in rows[1][3]
    assert "Each level against the recipe without the knob" in text
    knobs = ", ".join(k.name for k in config.paradigms[0].stochasticity)
    assert f"at three or more levels: {knobs} (supervised)." in text  # the config's, not prose
    assert "## Sample sizes" in text
    leak_free = findings.warning["RL"].table.set_index("detector").loc[PRIMARY]
    assert rows[3][3].startswith(f"AUROC {leak_free['auroc']:.3f} [")
    assert "minus the logistic baseline's" in rows[3][3]
    assert "does not beat the logistic-regression baseline" in text  # both detect all: a tie


# -- the settings -------------------------------------------------------------------------------
RUN_IDS = {  # sha256 of the sorted run ids of each paradigm: runs saved by earlier versions
    # (claims 1-2's ids changed with the dose-response design and the sample-size rule's starts)
    ("quick", "supervised"): (358, "68e177136b1f863a"),
    ("quick", "RL"): (52, "37770b2d09269a79"),
    ("quick", "LM"): (37, "4b4dbb3bc136bb48"),
    ("full", "supervised"): (12732, "ab6bb17606bcfaa6"),
    ("full", "RL"): (2524, "34b5b3173804f5c5"),
    ("full", "LM"): (296, "e421ffd0e7f88d3c"),
}


def run_ids(paradigm: Paradigm) -> list[str]:
    ids = []
    if {1, 2} & set(paradigm.claims):
        for group in plan_groups(paradigm.plan(workers=2)):
            ids += [group.baseline_id, *(p.run_id for p in group.perturbations)]
    if 3 in paradigm.claims:
        ids += [task_id(t) for t in paradigm.warning_tasks()]
    return sorted(ids)


@pytest.mark.parametrize("version", ["quick", "full"])
def test_the_settings_file_keeps_the_saved_run_ids(version: str) -> None:
    """Resuming relies on run ids: the data file gives the ids the code-written settings gave."""
    for paradigm in load_config(version).paradigms:
        ids = run_ids(paradigm)
        digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]
        assert (len(ids), digest) == RUN_IDS[version, paradigm.name]


def test_a_bad_settings_file_names_the_field(tmp_path) -> None:
    path = tmp_path / "paradigms.yaml"
    text = CONFIG_FILE.read_text()
    path.write_text(text.replace("warning_horizon: 10", "warning_horizon: -1", 1))
    with pytest.raises(ValueError, match="warning_horizon"):
        load_config("full", path)
    with pytest.raises(ValueError, match="version must be one of"):
        load_config("medium", path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [("sample_size: {start: 32, step: 8, cap: 40,", "sample_size: {start: 32, step: 8, cap: 16,",
      "cap must be >= start"),
     ("rho_ci_width: 0.5, trend_ci_width: 0.04}", "rho_ci_width: 3.0, trend_ci_width: 0.04}",
      "rho_ci_width"),
     ("sample_size: {start: 32,", "sample_size: {start: 1,", "start"),
     ("trend_ci_width: 0.04}", "trend_ci_width: -0.04}", "trend_ci_width"),
     ("levels: [0.1, 0.3, 1.0]", "levels: [0.1, 1.0]", "levels of 'grad_noise' must be >= 3"),
     ("levels: [0.1, 0.3, 1.0]", "levels: [0.3, 0.1, 1.0]", "increasing order"),
     ("levels: [0.1, 0.3, 1.0]", "levels: [0.1, 0.3, 5.0]", "grad_noise"),
     ("{name: grad_noise, levels", "{name: lr_shock, levels", "stochasticity knob must be one of"),
     ("{name: grad_noise, levels", "{name: rollback, levels", "stochasticity knob must be one of")],
)  # fmt: skip
def test_bad_claim_2_and_sample_size_settings_name_the_field(
    tmp_path, old: str, new: str, message: str
) -> None:
    path = tmp_path / "paradigms.yaml"
    text = CONFIG_FILE.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=message):
        load_config("full", path)


def test_a_knob_takes_at_least_three_levels_in_its_range() -> None:
    knob = StochasticityKnob(name="entropy_bonus", levels=(0.003, 0.01, 0.03))
    assert [s.magnitude for s in knob.stabilizers()] == [0.003, 0.01, 0.03]
    with pytest.raises(ValueError, match="magnitude"):
        StochasticityKnob(name="entropy_bonus", levels=(0.01, 0.1, 1.0))  # above 0.1


def test_the_full_config_tests_claim_1_on_24_recipes_or_more_and_4x_the_seeds() -> None:
    """Claim 1 on Digits and CartPole: >= 24 recipes (the grid alone), each paradigm's claim-2
    knob at >= 3 levels, and at least 4x the seeds of the earlier settings (8, 4, 4) to start
    with, growing to a cap while the CI-width targets are unmet."""
    config = {p.name: p for p in full_config().paradigms}
    for name, before in (("supervised", 8), ("RL", 4), ("LM", 4)):
        paradigm = config[name]
        assert paradigm.sample_size.start >= 4 * before
        assert all(len(k.levels) >= 3 for k in paradigm.stochasticity)
    for name in ("supervised", "RL"):
        paradigm = config[name]
        assert len(paradigm.grid) >= 24
        assert paradigm.sample_size.rho_ci_width == 0.5
        assert paradigm.sample_size.cap > paradigm.sample_size.start
        assert len(paradigm.grid_recipes()) == 1 + len(paradigm.grid) + sum(
            len(k.levels) for k in paradigm.stochasticity
        )
    assert [k.name for k in config["supervised"].stochasticity] == ["grad_noise", "dropout"]
    assert [k.name for k in config["RL"].stochasticity] == ["entropy_bonus", "input_noise"]
    quick = quick_config()
    assert all({1, 2, 3} <= set(p.claims) for p in quick.paradigms)  # every claim everywhere


# -- the quick run ------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_findings_writes_its_report_and_resumes(tmp_path) -> None:
    """``trainenv findings --quick`` writes the report, figures and data, with a verdict per
    claim and paradigm the config tests; a rerun redoes no run and reports the same."""
    assert cli.main(["findings", "--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    for claim in (1, 2, 3):
        assert CLAIMS[claim] in text and RULES[claim] in text
    for figure in ("claim1_decoupling.png", "claim2_stochasticity.png", "claim3_detectors.png"):
        assert (tmp_path / figure).stat().st_size > 0 and f"({figure})" in text
    config, data = quick_config(), tmp_path / "data"
    reported = reported_verdicts(text)
    for claim in (1, 2, 3):
        tested = {p.name for p in config.paradigms if claim in p.claims}
        assert set(reported[claim]) == tested

    outcomes = pd.read_csv(data / "claim1_outcomes.csv")
    pairs = pd.read_csv(data / "claim2_pairs.csv")
    assert set(outcomes["paradigm"]) == {p.name for p in config.paradigms}
    assert outcomes["final_p"].between(0, 1).all()
    for paradigm in config.paradigms:
        seeds = paradigm.sample_size
        mine = outcomes[outcomes["paradigm"] == paradigm.name]
        assert mine["recipe"].nunique() == len(paradigm.grid_recipes())
        n = mine["seed"].nunique()  # the sample-size rule's choice, within its bounds
        assert seeds.start <= n <= seeds.cap and len(mine) == len(paradigm.grid_recipes()) * n
        levels = sum(len(k.levels) for k in paradigm.stochasticity)
        perturbations = sum(len(g.magnitudes) for g in paradigm.interventions)
        assert (pairs["paradigm"] == paradigm.name).sum() == n * levels * perturbations
    detectors = pd.read_csv(data / "claim3_detectors.csv")
    assert (detectors["collapses"] > 0).all()
    assert detectors["false_alarm_rate"].between(0, 0.2).all()

    # A rerun into the same directory resumes: no run is redone, the verdicts are the same.
    runs = [f for sub in ("claim3", "audits") for f in (tmp_path / sub).rglob("*.parquet")]
    saved = {f: f.stat().st_mtime_ns for f in runs}
    expected = sum(len(p.warning_tasks()) for p in config.paradigms if 3 in p.claims)
    assert len(list((tmp_path / "claim3" / "runs").glob("*.parquet"))) == expected
    assert cli.main(["findings", "--quick", "--out", str(tmp_path)]) == 0
    assert {f: f.stat().st_mtime_ns for f in saved} == saved
    assert reported_verdicts((tmp_path / "report.md").read_text()) == reported


@pytest.mark.parametrize("backend", ["population", "serial"])
def test_a_held_noise_knob_is_perturbed_for_the_whole_window(tmp_path, backend: str) -> None:
    """Observation noise held on (claim 2's input_noise knob) and perturbed: the perturbation
    holds its magnitude for its whole window, as on a recipe without the knob, then the held
    level returns; the unperturbed branch keeps the held level throughout."""
    held = Stabilizer(name="input_noise", magnitude=0.1)
    recipe = Recipe(env="trainenv/Digits-MLP-v0", env_kwargs={"max_steps": 9},
                    stabilizers=(held,))  # fmt: skip
    noise = InterventionGrid(name="input_noise", magnitudes=(3.0,))
    plan = AuditPlan(recipes=(recipe,), interventions=(noise,), onsets=(2,), horizon=7,
                     seeds=(0,), backend=backend)  # fmt: skip
    store = run_audit(plan, tmp_path, progress=False)
    runs = store.runs().set_index("kind")
    steps = store.steps(store.runs()["run_id"])
    perturbed = steps[steps["run_id"] == runs.loc["perturbed", "run_id"]].sort_values("step")
    baseline = steps[steps["run_id"] == runs.loc["baseline", "run_id"]].sort_values("step")
    assert list(perturbed["knob.input_noise"]) == [3.0] * 5 + [0.1] * 2
    assert set(baseline["knob.input_noise"].iloc[1:]) == {0.1}
