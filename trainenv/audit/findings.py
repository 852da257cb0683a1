"""The seed paper's three claims, tested on trainenv's recipes: ``trainenv findings``.

1. *High final performance is frequently decoupled from training stability*: over a grid of
   recipes x seeds, Spearman's rank correlation between final performance and a stability
   score from a perturbation audit.
2. *Controlled stochasticity buffers learning dynamics*: the same perturbations with and
   without the trainer's stochasticity knob held on (gradient noise for the supervised run,
   the entropy bonus for RL, dropout for the LM); the paired difference in drawdown and in
   collapse rate.
3. *Meta-state deviations precede collapse*: the early-warning evaluation of
   :mod:`trainenv.warning`.

Each verdict ("supported", "not supported", "inconclusive") is computed from confidence
intervals by the rule written in the report (:data:`RULES`), never set by hand. ``--quick``
tests claims 1 and 2 on Digits-MLP and claim 3 on Digits-MLP, CartPole-PPO and TinyLM; the full
run tests every claim on all three (:data:`FULL_EXPECTED_MINUTES`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainenv.audit.formatting import format_interval as _ci
from trainenv.audit.formatting import format_number as _num
from trainenv.audit.formatting import format_table, pyplot, save_figure
from trainenv.audit.metrics import bootstrap_ci
from trainenv.audit.plan import AuditPlan, InterventionGrid, Recipe, Stabilizer
from trainenv.audit.runner import run_audit
from trainenv.audit.store import ResultStore
from trainenv.audit.tasks import backend_for
from trainenv.warning import evaluation as ev
from trainenv.warning import simulation as ew

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
CONFIDENCE = 0.95
STRONG = 0.5  # |Spearman rho| from here on is a strong association
NEGLIGIBLE = 0.02  # a mean drawdown difference within +-this (units of p) is immaterial
MIN_COLLAPSES = 5  # fewer collapses than this cannot test claim 3
FALSE_ALARM_RATE = 0.02  # every detector's calibrated per-step false-alarm rate
MIN_BEST_P = 0.05  # an unperturbed branch below this p has nothing to lose: no stability score
# The full run with 2 workers, measured on a 2-core machine shared with other jobs (load 3-6):
# 46 min in all (one invocation crashed in the LM audit after 40 min; the fixed rerun resumed
# and took 6). Each report states its own wall time.
FULL_EXPECTED_MINUTES = 45

RULES = {
    1: (
        f"**supported** if the {CONFIDENCE:.0%} CI of Spearman's rho lies inside "
        f"(-{STRONG}, {STRONG}): at most a moderate association either way; **not supported** "
        f"if it lies entirely beyond -{STRONG} or +{STRONG} (performance and stability go "
        "together, or trade off); **inconclusive** otherwise."
    ),
    2: (
        f"**supported** if the {CONFIDENCE:.0%} CI of the mean paired drawdown difference "
        f"(with minus without stochasticity, units of p) lies below 0 and not inside "
        f"[-{NEGLIGIBLE}, {NEGLIGIBLE}]; **not supported** if it lies above 0 or inside "
        f"[-{NEGLIGIBLE}, {NEGLIGIBLE}] (no material effect); **inconclusive** otherwise. The "
        "collapse-rate difference is reported alongside."
    ),
    3: (
        f"for the meta-state deviation detector at a {FALSE_ALARM_RATE:.0%} false-alarm rate: "
        f"**supported** if the {CONFIDENCE:.0%} CIs of the AUROC and of the detection rate lie "
        "above 0.5 and that of the median lead time above 0 updates; **not supported** if the "
        "AUROC CI or the detection-rate CI lies below 0.5, or the lead-time CI at or below 0 "
        f"(or no collapse is detected); **inconclusive** otherwise, and whenever fewer than "
        f"{MIN_COLLAPSES} runs collapsed."
    ),
}
OVERALL_RULE = (
    "A claim's overall verdict is its paradigms' common verdict when they agree, else "
    "inconclusive (the claims say the regularities hold across paradigms)."
)


# -- verdicts -----------------------------------------------------------------------------------
def verdict_decoupling(lo: float, hi: float) -> str:
    """Claim 1 from the CI ``[lo, hi]`` of Spearman's rho (see :data:`RULES`)."""
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    if lo > -STRONG and hi < STRONG:
        return SUPPORTED
    if lo >= STRONG or hi <= -STRONG:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_buffering(lo: float, hi: float) -> str:
    """Claim 2 from the CI of the mean paired drawdown difference, with minus without."""
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    immaterial = lo >= -NEGLIGIBLE and hi <= NEGLIGIBLE
    if hi < 0 and not immaterial:
        return SUPPORTED
    if lo > 0 or immaterial:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_warning(row: Mapping[str, float]) -> str:
    """Claim 3 from the primary detector's row of
    :func:`~trainenv.warning.evaluation.evaluate_detectors`."""
    if row["collapses"] < MIN_COLLAPSES:
        return INCONCLUSIVE
    if row["detected"] == 0:
        return NOT_SUPPORTED
    bounds = [row[k] for k in ("auroc_lo", "auroc_hi", "detection_rate_lo", "detection_rate_hi",
                               "lead_median_lo", "lead_median_hi")]  # fmt: skip
    if any(math.isnan(b) for b in bounds):
        return INCONCLUSIVE
    auroc_lo, auroc_hi, rate_lo, rate_hi, lead_lo, lead_hi = bounds
    if auroc_lo > 0.5 and rate_lo > 0.5 and lead_lo > 0:
        return SUPPORTED
    if auroc_hi < 0.5 or rate_hi < 0.5 or lead_hi <= 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def overall(verdicts: Sequence[str]) -> str:
    """The common verdict of the paradigms, else inconclusive (:data:`OVERALL_RULE`)."""
    return verdicts[0] if verdicts and len(set(verdicts)) == 1 else INCONCLUSIVE


# -- the design -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Paradigm:
    """How one kind of training run is tested.

    Attributes:
        name: ``"supervised"``, ``"RL"`` or ``"LM"``.
        env: The registered environment; its registered recipe is the base recipe.
        grid: Claim 1's recipes besides the base: label -> trainer kwargs.
        stochasticity: Claim 2's stochasticity knob, held on for the whole run.
        interventions: The perturbations audited (claims 1 and 2).
        onset: Steps of unperturbed training before a perturbation.
        horizon: Steps compared after the onset; episodes last ``onset + horizon`` steps, so
            the unperturbed branch's last ``p`` is the run's final performance.
        seeds: Seeds of claims 1 and 2.
        ramps: Claim 3's gradual perturbations (on the registered recipe and episode length,
            which the env's reference band was calibrated on).
        warning_seeds: Seeds of claim 3.
        warning_horizon: Claim 3's horizon ``H``, in steps.
        claims: The claims tested on this paradigm.
    """

    name: str
    env: str
    grid: Mapping[str, Mapping[str, Any]]
    stochasticity: Stabilizer
    interventions: tuple[InterventionGrid, ...]
    onset: int
    horizon: int
    seeds: int
    ramps: tuple[ew.Ramp, ...]
    warning_seeds: int
    warning_horizon: int
    claims: tuple[int, ...] = (1, 2, 3)

    @property
    def short(self) -> str:
        return self.env.split("/")[-1]

    @property
    def base(self) -> Recipe:
        return self._recipe(f"{self.short} (registered)", {})

    @property
    def stochastic(self) -> Recipe:
        label = f"{self.short} +{self.stochasticity.label()}"
        return self._recipe(label, {}, (self.stochasticity,))

    def grid_recipes(self) -> list[Recipe]:
        """Claim 1's recipes: the base, then the grid."""
        grid = [self._recipe(f"{self.short} {label}", kw) for label, kw in self.grid.items()]
        return [self.base, *grid]

    def plan(self, workers: int) -> AuditPlan:
        """The audit behind claims 1 and 2 (one plan, so runs shared by both run once)."""
        recipes = self.grid_recipes() if 1 in self.claims else [self.base]
        if 2 in self.claims:
            recipes.append(self.stochastic)
        return AuditPlan(
            recipes=tuple(recipes),
            interventions=self.interventions,
            onsets=(self.onset,),
            horizon=self.horizon,
            seeds=tuple(range(self.seeds)),
            backend=backend_for(workers),
            workers=workers,
        )

    def warning_tasks(self) -> list[ew.Task]:
        return ew.tasks_for(self.name, self.env, self.ramps, range(self.warning_seeds))

    def _recipe(
        self, name: str, trainer_kwargs: Mapping[str, Any], stabilizers: tuple[Stabilizer, ...] = ()
    ) -> Recipe:
        env_kwargs: dict[str, Any] = {"max_steps": self.onset + self.horizon}
        if trainer_kwargs:
            env_kwargs["trainer_kwargs"] = dict(trainer_kwargs)
        return Recipe(name=name, env=self.env, env_kwargs=env_kwargs, stabilizers=stabilizers)


@dataclass(frozen=True)
class FindingsConfig:
    """A findings run: its paradigms and statistics settings."""

    name: str
    paradigms: tuple[Paradigm, ...]
    n_boot: int = 1000
    false_alarm_rate: float = FALSE_ALARM_RATE


def _grid(**axes: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Every combination of the axes' values, labelled ``"a=1 b=2"``."""
    import itertools

    names = list(axes)
    return {
        " ".join(f"{n}={v:g}" for n, v in zip(names, combo)): dict(zip(names, combo))
        for combo in itertools.product(*axes.values())
    }


def _ramps(
    specs: Sequence[tuple[str, float, float]], steps: int, onset: int, keep: int | None = None
) -> tuple[ew.Ramp, ...]:
    """Ramps ``(intervention, start, end)`` over ``steps`` steps from ``onset``; the first
    ``keep`` of them (all if ``None``)."""
    return tuple(ew.Ramp(name, lo, hi, steps, onset) for name, lo, hi in specs[:keep])


def _digits(quick: bool) -> Paradigm:
    lrs = (3e-4, 1e-3, 3e-3, 1e-2) if quick else (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    ramps = [("lr_shock", 2.0, 300.0), ("lr_shock", 2.0, 30.0), ("weight_noise", 0.01, 3.0),
             ("weight_noise", 0.01, 0.3), ("label_noise", 0.05, 1.0),
             ("input_shift", 0.1, 10.0)]  # fmt: skip
    return Paradigm(
        name="supervised",
        env="trainenv/Digits-MLP-v0",
        grid=_grid(lr=lrs, batch_size=(16, 64)),
        stochasticity=Stabilizer(name="grad_noise", magnitude=0.3),
        interventions=(
            InterventionGrid(name="lr_shock", magnitudes=(30.0, 100.0)),
            InterventionGrid(name="input_shift", magnitudes=(10.0,) if quick else (3.0, 10.0)),
            InterventionGrid(name="weight_noise", magnitudes=(1.0, 3.0)),
            InterventionGrid(name="label_noise", magnitudes=(1.0,) if quick else (0.6, 1.0)),
        ),
        onset=10,
        horizon=20,
        seeds=4 if quick else 8,
        ramps=_ramps(ramps, steps=25, onset=10),
        warning_seeds=6 if quick else 12,
        warning_horizon=10,
    )


def _tiny_lm(quick: bool) -> Paradigm:
    # Quick: the first two (severe ramps: runs collapse).
    ramps = [("weight_noise", 0.01, 3.0), ("label_noise", 0.05, 1.0), ("lr_shock", 2.0, 30.0),
             ("lr_shock", 2.0, 300.0), ("token_corruption", 0.02, 1.0)]  # fmt: skip
    return Paradigm(
        name="LM",
        env="trainenv/TinyLM-v0",
        grid={
            f"lr={lr:g} batch_size={b}": {"lr": lr, "batch_size": b}
            for lr, b in ((1e-3, 16), (1e-2, 16), (1e-3, 8), (3e-3, 8), (1e-2, 8))
        },
        stochasticity=Stabilizer(name="dropout", magnitude=0.1),
        interventions=(
            InterventionGrid(name="lr_shock", magnitudes=(30.0, 300.0)),
            InterventionGrid(name="token_corruption", magnitudes=(0.5,)),
            InterventionGrid(name="weight_noise", magnitudes=(1.0,)),
        ),
        onset=10,
        horizon=20,
        seeds=4,
        ramps=_ramps(ramps, steps=15, onset=8, keep=2 if quick else None),
        warning_seeds=3 if quick else 8,
        warning_horizon=5,
        claims=(3,) if quick else (1, 2, 3),
    )


def _cartpole(quick: bool) -> Paradigm:
    # Quick: the first two (severe ramps: runs collapse).
    ramps = [("lr_shock", 2.0, 1000.0), ("reward_flip", 0.05, 1.0), ("lr_shock", 2.0, 20.0),
             ("input_noise", 0.05, 5.0), ("weight_noise", 0.01, 1.0)]  # fmt: skip
    grid = {
        label: {"algo_kwargs": kwargs}
        for label, kwargs in _grid(learning_rate=(3e-4, 1e-3, 3e-3), n_epochs=(5, 10)).items()
    }
    return Paradigm(
        name="RL",
        env="trainenv/CartPole-PPO-v0",
        grid=grid,
        stochasticity=Stabilizer(name="entropy_bonus", magnitude=0.01),
        interventions=(
            InterventionGrid(name="lr_shock", magnitudes=(100.0,)),
            InterventionGrid(name="input_noise", magnitudes=(3.0,)),
            InterventionGrid(name="weight_noise", magnitudes=(1.0,)),
            InterventionGrid(name="reward_flip", magnitudes=(1.0,)),
        ),
        onset=50,
        horizon=50,
        seeds=4,
        ramps=_ramps(ramps, steps=30, onset=40, keep=2 if quick else None),
        warning_seeds=4 if quick else 6,
        warning_horizon=10,
        claims=(3,) if quick else (1, 2, 3),
    )


def quick_config() -> FindingsConfig:
    """Claims 1-3 on Digits-MLP, claim 3 on CartPole-PPO and TinyLM too: a few minutes on 2
    cores."""
    paradigms = (_digits(quick=True), _cartpole(quick=True), _tiny_lm(quick=True))
    return FindingsConfig("quick", paradigms, n_boot=500)


def full_config() -> FindingsConfig:
    """Every claim on Digits-MLP, CartPole-PPO and TinyLM: about
    :data:`FULL_EXPECTED_MINUTES` minutes on 2 cores."""
    paradigms = (_digits(quick=False), _cartpole(quick=False), _tiny_lm(quick=False))
    return FindingsConfig("full", paradigms)


# -- claim 1: decoupling --------------------------------------------------------------------
def recipe_outcomes(store: ResultStore, recipes: Sequence[str], onset: int) -> pd.DataFrame:
    """Per recipe and seed: ``final_p`` and ``stability`` from an audit's results.

    ``final_p`` is the unperturbed branch's ``p`` at its last step. ``stability`` is
    ``1 - mean relative drawdown`` over the seed's perturbed runs, a run's relative drawdown
    being its drawdown over the unperturbed branch's best ``p`` in the horizon (the share of
    what there was to lose that it lost at worst, in ``[0, 1]``). A recipe x seed whose
    unperturbed run collapsed scores 0 on both; one whose unperturbed branch never reaches
    ``p = MIN_BEST_P`` has no stability score (NaN).
    """
    runs = store.runs()
    runs = runs[runs["recipe"].isin(recipes)]
    base = runs[runs["kind"] == "baseline"]
    steps = store.steps(base["run_id"])
    rows = []
    for b in base.itertuples():
        perturbed = runs[(runs["kind"] == "perturbed") & (runs["recipe"] == b.recipe)
                         & (runs["seed"] == b.seed) & (runs["status"] == "ok")]  # fmt: skip
        if b.status != "ok" or bool(b.collapsed):
            final, stability = 0.0, 0.0
        else:
            mine = steps[steps["run_id"] == b.run_id].sort_values("step")
            final = float(mine["p"].iloc[-1])
            best = float(mine.loc[mine["step"] > onset, "p"].max())
            relative = np.minimum(1.0, perturbed["drawdown"].to_numpy(float) / best)
            stability = 1.0 - float(relative.mean()) if best >= MIN_BEST_P else math.nan
        rows.append({"recipe": b.recipe, "seed": int(b.seed), "final_p": final,
                     "stability": stability})  # fmt: skip
    return pd.DataFrame(rows)


def rank_correlation(
    performance: np.ndarray,
    stability: np.ndarray,
    n_boot: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Spearman's rho between the recipe means of two ``(recipes, seeds)`` arrays, with a
    two-level percentile bootstrap CI (recipes and seeds both resampled: the claim is about
    recipes in general, and each recipe's means carry seed noise). NaN cells are skipped.

    Returns ``(rho, lo, hi)``.
    """
    performance, stability = np.asarray(performance, float), np.asarray(stability, float)
    if performance.shape != stability.shape or performance.ndim != 2 or performance.shape[0] < 3:
        raise ValueError(
            f"need two (recipes >= 3, seeds) arrays of one shape, got {performance.shape} "
            f"and {stability.shape}"
        )
    n_recipes, n_seeds = performance.shape
    recipe_rng = np.random.default_rng(seed + 1)

    def statistic(draws: np.ndarray) -> np.ndarray:
        out = []
        for row in draws:
            r = recipe_rng.integers(n_recipes, size=n_recipes)
            out.append(_spearman(performance[np.ix_(r, row)], stability[np.ix_(r, row)]))
        return np.array(out)

    rho = _spearman(performance, stability)
    lo, hi = bootstrap_ci(statistic, n_seeds, n_boot, confidence, seed)
    return rho, lo, hi


def _spearman(performance: np.ndarray, stability: np.ndarray) -> float:
    """Spearman's rho of the row means (NaN if either is constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input and all-NaN rows: NaN, dropped later
        x, y = np.nanmean(performance, axis=1), np.nanmean(stability, axis=1)
        keep = ~(np.isnan(x) | np.isnan(y))
        return float(spearmanr(x[keep], y[keep]).statistic) if keep.sum() >= 3 else math.nan


@dataclass
class Decoupling:
    """Claim 1 on one paradigm."""

    outcomes: pd.DataFrame  # per recipe x seed
    recipes: pd.DataFrame  # per recipe: means and ranks
    rho: float
    lo: float
    hi: float
    discordant: list[str]  # top half on one measure, bottom half on the other
    verdict: str


def decoupling(outcomes: pd.DataFrame, n_boot: int, seed: int = 0) -> Decoupling:
    """Claim 1 from :func:`recipe_outcomes`."""
    perf = outcomes.pivot(index="recipe", columns="seed", values="final_p")
    stab = outcomes.pivot(index="recipe", columns="seed", values="stability").loc[perf.index]
    rho, lo, hi = rank_correlation(perf.to_numpy(), stab.to_numpy(), n_boot, CONFIDENCE, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        recipes = pd.DataFrame({"final_p": perf.mean(axis=1), "stability": stab.mean(axis=1)})
    recipes["perf_rank"] = recipes["final_p"].rank(ascending=False, method="min")
    recipes["stab_rank"] = recipes["stability"].rank(ascending=False, method="min")
    half = len(recipes) / 2
    discordant = [
        str(name)
        for name, r in recipes.iterrows()
        if (r.perf_rank <= half) != (r.stab_rank <= half) and abs(r.perf_rank - r.stab_rank) >= half
    ]
    recipes = recipes.sort_values("perf_rank").reset_index()
    return Decoupling(outcomes, recipes, rho, lo, hi, discordant, verdict_decoupling(lo, hi))


# -- claim 2: stochasticity buffers ---------------------------------------------------------
def paired_differences(runs: pd.DataFrame, without: str, with_: str) -> pd.DataFrame:
    """The perturbed runs of recipe ``with_`` matched to those of ``without`` (same seed,
    onset, intervention and magnitude), with ``d_drawdown`` and ``d_collapsed`` (with minus
    without)."""
    keys = ["seed", "onset", "intervention", "magnitude"]

    def side(recipe: str) -> pd.DataFrame:
        rows = runs[(runs["recipe"] == recipe) & (runs["kind"] == "perturbed")
                    & (runs["status"] == "ok")]  # fmt: skip
        return rows[[*keys, "drawdown", "collapsed"]].astype({"collapsed": float})

    pairs = side(without).merge(side(with_), on=keys, suffixes=("_without", "_with"))
    pairs["d_drawdown"] = pairs["drawdown_with"] - pairs["drawdown_without"]
    pairs["d_collapsed"] = pairs["collapsed_with"] - pairs["collapsed_without"]
    return pairs


def paired_effect(
    differences: np.ndarray, seeds: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean paired difference and the standardised effect size ``d_z = mean / sd`` (of the
    pairs' differences), each with a percentile bootstrap CI over seeds (a seed's pairs are
    resampled together). Keys: ``mean``, ``mean_lo``, ``mean_hi``, ``d_z``, ``d_z_lo``,
    ``d_z_hi``, ``pairs``."""
    differences, seeds = np.asarray(differences, float), np.asarray(seeds)
    if differences.shape != seeds.shape or len(differences) < 2:
        raise ValueError(f"need >= 2 differences with one seed each, got {differences.shape}")
    units = [differences[seeds == s] for s in np.unique(seeds)]

    def mean(draws: np.ndarray) -> np.ndarray:
        return np.array([np.concatenate([units[i] for i in row]).mean() for row in draws])

    def d_z(draws: np.ndarray) -> np.ndarray:
        return np.array([_standardised(np.concatenate([units[i] for i in row])) for row in draws])

    out: dict[str, float] = {"pairs": len(differences)}
    for key, statistic in (("mean", mean), ("d_z", d_z)):
        out[key] = float(statistic(np.arange(len(units))[None, :])[0])
        out[f"{key}_lo"], out[f"{key}_hi"] = bootstrap_ci(
            statistic, len(units), n_boot, CONFIDENCE, seed
        )
    return out


def _standardised(values: np.ndarray) -> float:
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean() / sd) if sd > 0 else math.nan


@dataclass
class Buffering:
    """Claim 2 on one paradigm."""

    without: str
    with_: str
    pairs: pd.DataFrame
    drawdown: dict[str, float]
    collapse: dict[str, float]
    verdict: str


def buffering(runs: pd.DataFrame, without: str, with_: str, n_boot: int) -> Buffering:
    """Claim 2 from an audit's runs table."""
    pairs = paired_differences(runs, without, with_)
    seeds = pairs["seed"].to_numpy()
    drawdown = paired_effect(pairs["d_drawdown"].to_numpy(), seeds, n_boot)
    collapse = paired_effect(pairs["d_collapsed"].to_numpy(), seeds, n_boot)
    verdict = verdict_buffering(drawdown["mean_lo"], drawdown["mean_hi"])
    return Buffering(without, with_, pairs, drawdown, collapse, verdict)


# -- claim 3: early warning -----------------------------------------------------------------
@dataclass
class EarlyWarning:
    """Claim 3 on one paradigm."""

    table: pd.DataFrame  # one row per detector (evaluate_detectors)
    traces: list[ew.Trace]
    horizon: int  # steps
    verdict: str

    @property
    def primary(self) -> pd.Series:
        return self.table.set_index("detector").loc[ev.PRIMARY]


def early_warning(
    traces: list[ew.Trace], horizon: int, false_alarm_rate: float, n_boot: int
) -> EarlyWarning:
    """Claim 3 from one paradigm's traces."""
    table = ev.evaluate_detectors(traces, horizon, false_alarm_rate, n_boot, CONFIDENCE)
    primary = table.set_index("detector").loc[ev.PRIMARY]
    return EarlyWarning(table, traces, horizon, verdict_warning(primary))


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Findings:
    """The results of a findings run, per claim and paradigm."""

    config: FindingsConfig
    decoupling: dict[str, Decoupling] = field(default_factory=dict)
    buffering: dict[str, Buffering] = field(default_factory=dict)
    warning: dict[str, EarlyWarning] = field(default_factory=dict)
    wall_s: float = math.nan
    resumed: bool = False  # runs saved by an earlier invocation were read back, not rerun

    def verdicts(self) -> dict[int, tuple[dict[str, str], str]]:
        """Per claim: the verdict per paradigm and the overall verdict."""
        out = {}
        for claim, results in ((1, self.decoupling), (2, self.buffering), (3, self.warning)):
            per = {name: r.verdict for name, r in results.items()}
            out[claim] = (per, overall(list(per.values())))
        return out


def run_findings(
    out: str | Path, quick: bool = False, workers: int = 2, progress: bool | None = None
) -> tuple[Path, Findings]:
    """Test the three claims and write ``report.md``, figures and data under ``out``.

    Claim 3's runs go first, each saved as it finishes under ``out/claim3`` (a results store:
    one ``steps/`` table per trace) and gathered into ``out/data/claim3_traces.parquet``; the
    audits behind claims 1 and 2 are stored under ``out/audits/<paradigm>``. Rerunning with
    the same ``out`` resumes: finished runs of either kind are not run again. Returns the
    report's path and the results.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    config = quick_config() if quick else full_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    saved = [ResultStore(d).finished() for d in (out / "claim3", *(out / "audits").glob("*"))]
    findings = Findings(config, resumed=any(saved))
    traces = simulate(config, workers, progress, ResultStore(out / "claim3"))
    (out / "data").mkdir(exist_ok=True)
    ew.traces_frame(traces).to_parquet(out / "data" / "claim3_traces.parquet", index=False)
    for paradigm in config.paradigms:
        if 3 in paradigm.claims:
            mine = [t for t in traces if t.paradigm == paradigm.name]
            findings.warning[paradigm.name] = early_warning(
                mine, paradigm.warning_horizon, config.false_alarm_rate, config.n_boot
            )
    for paradigm in config.paradigms:
        if {1, 2} & set(paradigm.claims):
            _audit_claims(findings, paradigm, out, workers, progress)
    findings.wall_s = time.perf_counter() - started
    return write_findings(findings, out), findings


def _audit_claims(
    findings: Findings, paradigm: Paradigm, out: Path, workers: int, progress: bool | None
) -> None:
    store = run_audit(paradigm.plan(workers), out / "audits" / paradigm.name, progress=progress)
    n_boot = findings.config.n_boot
    if 1 in paradigm.claims:
        names = [r.name for r in paradigm.grid_recipes()]
        outcomes = recipe_outcomes(store, names, paradigm.onset)
        findings.decoupling[paradigm.name] = decoupling(outcomes, n_boot)
    if 2 in paradigm.claims:
        findings.buffering[paradigm.name] = buffering(
            store.runs(), paradigm.base.name, paradigm.stochastic.name, n_boot
        )


def simulate(
    config: FindingsConfig, workers: int, progress: bool | None, store: ResultStore
) -> list[ew.Trace]:
    """Claim 3's runs of every paradigm (:func:`~trainenv.warning.simulation.simulate_runs`)."""
    # The config lists paradigms cheapest first: submitting the costliest runs first keeps
    # the workers busy to the end.
    tasks = [t for p in reversed(config.paradigms) if 3 in p.claims for t in p.warning_tasks()]
    return ew.simulate_runs(tasks, store, workers, progress)


# -- the report ---------------------------------------------------------------------------------
CLAIMS = {
    1: "High final performance is frequently decoupled from training stability.",
    2: "Controlled stochasticity buffers learning dynamics.",
    3: "Deviations of the low-dimensional meta-state precede performance collapse.",
}
SOURCE = (
    "Li, Yang, Yao and Zhang (2026), *Training instability in deep learning follows "
    "low-dimensional dynamical principles*, arXiv:2601.13160 (StabilityBench)."
)


def write_findings(findings: Findings, out: Path) -> Path:
    """Write ``report.md``, the figures and the data tables (``data/``) under ``out``
    (claim 3's traces are written by :func:`run_findings` as soon as they exist)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    _write_data(findings, data)
    figures = {}
    for name, plot, tested in (
        (
            "claim1_decoupling.png",
            partial(plot_decoupling, findings.decoupling),
            findings.decoupling,
        ),
        (
            "claim2_stochasticity.png",
            partial(plot_buffering, findings.buffering),
            findings.buffering,
        ),
        ("claim3_detectors.png", partial(plot_detectors, findings.warning), findings.warning),
        ("claim3_example.png", partial(plot_example, findings.warning), findings.warning),
    ):
        if tested:
            plot(out / name)
            figures[name] = name
    report = out / "report.md"
    report.write_text(_markdown(findings, figures))
    return report


def _write_data(findings: Findings, data: Path) -> None:
    def tagged(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
        return pd.concat([f.assign(paradigm=name) for name, f in frames.items()], ignore_index=True)

    if findings.decoupling:
        tagged({n: d.outcomes for n, d in findings.decoupling.items()}).to_csv(
            data / "claim1_outcomes.csv", index=False
        )
        tagged({n: d.recipes for n, d in findings.decoupling.items()}).to_csv(
            data / "claim1_recipes.csv", index=False
        )
    if findings.buffering:
        tagged({n: b.pairs for n, b in findings.buffering.items()}).to_csv(
            data / "claim2_pairs.csv", index=False
        )
    if findings.warning:
        tagged({n: w.table for n, w in findings.warning.items()}).to_csv(
            data / "claim3_detectors.csv", index=False
        )


def _coverage(config: FindingsConfig) -> str:
    """``"claims 1 and 2 on A; claim 3 on A, B and C"``: which claim each config tests where."""
    by_claim: dict[int, list[str]] = {}
    for paradigm in config.paradigms:
        for claim in paradigm.claims:
            by_claim.setdefault(claim, []).append(paradigm.env.split("/")[-1].removesuffix("-v0"))
    groups: dict[tuple[str, ...], list[int]] = {}
    for claim, envs in sorted(by_claim.items()):
        groups.setdefault(tuple(envs), []).append(claim)
    return "; ".join(
        f"claim{'s' * (len(claims) > 1)} {_and(map(str, claims))} on {_and(envs)}"
        for envs, claims in groups.items()
    )


def _and(items: Any) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _markdown(findings: Findings, figures: dict[str, str]) -> str:
    config = findings.config
    command = "trainenv findings --quick" if config.name == "quick" else "trainenv findings"
    lines = [
        "# The three claims of StabilityBench, tested with trainenv",
        "",
        f"Source of the claims: {SOURCE}",
        "",
        f"Run: `{command}` ({config.name} version), {findings.wall_s / 60:.1f} min wall time"
        f"{' (this invocation; it resumed runs saved by an earlier one)' * findings.resumed}. "
        f"The full version (`trainenv findings`) tests {_coverage(full_config())} and takes "
        f"about {FULL_EXPECTED_MINUTES} minutes on 2 CPU cores; the quick version tests "
        f"{_coverage(quick_config())}, with fewer seeds and recipes, so its intervals are wider.",
        "",
        "## Verdicts",
        "",
        _verdict_table(findings),
        "",
        "Each verdict is computed from confidence intervals by the rule stated under its claim; "
        f"intervals are {CONFIDENCE:.0%} percentile bootstraps over seeds (claim 1: over "
        f"recipes and seeds), {config.n_boot} resamples. {OVERALL_RULE}",
        "",
    ]
    lines += _claim1(findings, figures) + _claim2(findings, figures) + _claim3(findings, figures)
    lines += _caveats()
    return "\n".join(lines) + "\n"


def _verdict_table(findings: Findings) -> str:
    rows = []
    for claim, (per, verdict) in findings.verdicts().items():
        tested = ", ".join(f"{name}: {v}" for name, v in per.items()) or "not tested"
        rows.append([f"{claim}. {CLAIMS[claim]}", tested, f"**{verdict}**" if per else "-"])
    return format_table(["claim", "per paradigm", "overall"], rows, markdown=True)


def _paradigm(findings: Findings, name: str) -> Paradigm:
    return next(p for p in findings.config.paradigms if p.name == name)


def _perturbations(paradigm: Paradigm) -> str:
    return ", ".join(
        f"{g.name} x{{{', '.join(f'{m:g}' for m in g.magnitudes)}}}" for g in paradigm.interventions
    )


def _claim1(findings: Findings, figures: dict[str, str]) -> list[str]:
    lines = [f"## Claim 1: {CLAIMS[1]}", ""]
    if not findings.decoupling:
        return [*lines, "Not tested in this run.", ""]
    lines += [
        "**Design.** For each paradigm, a grid of recipes (the registered one and variations of "
        "its learning rate and batch size or epochs) x seeds is audited: each run trains "
        "unperturbed for `onset` steps, then forks; each perturbation hits one fork and is "
        "compared for `horizon` steps with the unperturbed fork. *Final performance* is the "
        "unperturbed fork's normalised performance p (0 chance, 1 ceiling) at the last step. "
        "*Stability* is 1 minus the mean relative drawdown over the perturbations, a run's "
        "relative drawdown being its largest gap below the unperturbed fork divided by that "
        "fork's best p in the horizon (0: never behind; 1: lost everything at worst). A run "
        "whose unperturbed fork collapses scores 0 on both. The statistic is Spearman's rank "
        "correlation between the recipes' mean final performance and mean stability.",
        "",
    ]
    for name, result in findings.decoupling.items():
        paradigm = _paradigm(findings, name)
        lines += [
            f"### {name} ({paradigm.env})",
            "",
            f"{len(result.recipes)} recipes x {paradigm.seeds} seeds; perturbations "
            f"{_perturbations(paradigm)}; onset {paradigm.onset} steps, horizon "
            f"{paradigm.horizon} steps.",
            "",
            format_table(
                ["recipe", "final p", "stability", "performance rank", "stability rank"],
                [
                    [
                        r.recipe,
                        _num(r.final_p),
                        _num(r.stability),
                        f"{r.perf_rank:.0f}",
                        _num(r.stab_rank, ".0f"),
                    ]
                    for r in result.recipes.itertuples()
                ],  # fmt: skip
                markdown=True,
            ),
            "",
            f"Spearman's rho = {_num(result.rho)}, {CONFIDENCE:.0%} CI {_ci(result.lo, result.hi)}"
            f". {_extremes(result.recipes)} Recipes in the top half on one measure and the "
            f"bottom half on the other: {', '.join(result.discordant) or 'none'}.",
            "",
            f"Verdict ({name}): **{result.verdict}**.",
            "",
        ]
    lines += [f"**Rule.** {RULES[1]}", ""]
    if "claim1_decoupling.png" in figures:
        lines += ["![claim 1](claim1_decoupling.png)", ""]
    return lines


def _extremes(recipes: pd.DataFrame) -> str:
    best = recipes.sort_values("perf_rank").iloc[0]
    stable = recipes.sort_values("stab_rank").iloc[0]
    n = len(recipes)
    return (
        f"Best final performance: {best.recipe} (stability rank {_num(best.stab_rank, '.0f')} "
        f"of {n}); most stable: {stable.recipe} (performance rank {stable.perf_rank:.0f} of {n})."
    )


def _claim2(findings: Findings, figures: dict[str, str]) -> list[str]:
    lines = [f"## Claim 2: {CLAIMS[2]}", ""]
    if not findings.buffering:
        return [*lines, "Not tested in this run.", ""]
    lines += [
        "**Design.** The registered recipe is audited with and without its trainer's "
        "stochasticity knob held on for the whole run (on the shared prefix and on both forks "
        "of every pair): Gaussian gradient noise (supervised), the PPO entropy bonus (RL), "
        "dropout (LM). Both recipes get the same perturbations, seeds, onset and horizon; a "
        "perturbed run with the knob is paired with the run without it of the same seed, "
        "perturbation and magnitude. Drawdown is each run's largest gap below its own "
        "unperturbed fork (units of p); collapse is the env's collapse rule firing or no "
        "recovery by the end of the horizon. Effects are with minus without: negative "
        "means the knob buffers. d_z is the mean over the standard deviation of the paired "
        "differences.",
        "",
    ]
    rows = []
    for name, b in findings.buffering.items():
        d, c, pairs = b.drawdown, b.collapse, b.pairs
        rows.append([
            name, _paradigm(findings, name).stochasticity.label(), str(int(d["pairs"])),
            f"{_num(pairs['drawdown_without'].mean())} / {_num(pairs['drawdown_with'].mean())}",
            f"{_num(d['mean'], '+.3f')} {_ci(d['mean_lo'], d['mean_hi'], '+.3f')}",
            f"{_num(d['d_z'], '+.2f')} {_ci(d['d_z_lo'], d['d_z_hi'], '+.2f')}",
            f"{_num(pairs['collapsed_without'].mean(), '.2f')} / "
            f"{_num(pairs['collapsed_with'].mean(), '.2f')}",
            f"{_num(c['mean'], '+.2f')} {_ci(c['mean_lo'], c['mean_hi'], '+.2f')}",
            f"**{b.verdict}**",
        ])  # fmt: skip
    headers = ["paradigm", "knob", "pairs", "drawdown without / with", "mean difference [CI]",
               "d_z [CI]", "collapse rate without / with", "difference [CI]",
               "verdict"]  # fmt: skip
    lines += [format_table(headers, rows, markdown=True), ""]
    for name in findings.buffering:
        paradigm = _paradigm(findings, name)
        lines.append(
            f"- {name}: {paradigm.env}, {paradigm.seeds} seeds, perturbations "
            f"{_perturbations(paradigm)}, onset {paradigm.onset}, horizon {paradigm.horizon}."
        )
    lines += ["", f"**Rule.** {RULES[2]}", ""]
    if "claim2_stochasticity.png" in figures:
        lines += ["![claim 2](claim2_stochasticity.png)", ""]
    return lines


def _claim3(findings: Findings, figures: dict[str, str]) -> list[str]:
    lines = [f"## Claim 3: {CLAIMS[3]}", ""]
    if not findings.warning:
        return [*lines, "Not tested in this run.", ""]
    lines += [
        "**Design.** Per seed, one unperturbed reference run of the registered recipe and one "
        "run per *ramp*: a perturbation whose magnitude grows every step from a small to a "
        "large value, then holds (mild ramps that runs survive, severe ones that they do not). "
        "A run collapses when the env's collapse rule fires; the *collapse onset* T is the "
        "first step of the final streak below the rule's threshold. Detectors score every "
        "step: the **meta-state deviation** (Mahalanobis distance of the latent meta-state from "
        "the reference band of unperturbed calibration runs at the same training progress, "
        "`info['deviation']`), the **self-deviation** (distance of the latent from the run's "
        "own recent history), and the baselines practitioners use: a **loss spike** rule "
        "(Lightning), a **gradient-norm z-score** (ZClip) and **CUSUM** on the loss. Each is "
        f"calibrated to a {findings.config.false_alarm_rate:.0%} per-step false-alarm rate on "
        "reference runs, cross-fitted by seed (thresholds for a seed come from the other "
        "seeds' reference runs, so the false-alarm rate shown is out of sample). A collapse "
        "is *detected* if an alarm falls in the steps T - H .. T; the *lead time* is T minus "
        "the first such alarm, in updates (so at most H steps' worth). *Alarmed survivors*: "
        "share of perturbed runs that did not collapse yet alarmed after the ramp began. "
        "AUROC: of the score for 'collapse onset within H steps', over the steps of reference "
        "runs and the perturbed runs' steps from the ramp's onset up to T.",
        "",
    ]
    for name, w in findings.warning.items():
        paradigm = _paradigm(findings, name)
        k = w.traces[0].k
        ramps = "; ".join(
            f"{r.intervention} {r.start:g} -> {r.end:g} over {r.steps} steps from step "
            f"{r.onset + 1}" for r in paradigm.ramps
        )  # fmt: skip
        primary = w.primary
        lines += [
            f"### {name} ({paradigm.env}, {k} update(s) per step)",
            "",
            f"{paradigm.warning_seeds} seeds x (1 reference + {len(paradigm.ramps)} ramps): "
            f"{ramps}. H = {w.horizon} steps ({w.horizon * k} updates); "
            f"{int(primary['collapses'])} collapses, {int(primary['survivors'])} perturbed "
            "survivors.",
            "",
            format_table(*_detector_rows(w.table), markdown=True),
            "",
            _best_detectors(w.table),
            "",
            f"Verdict ({name}): **{w.verdict}**.",
            "",
        ]
    lines += [f"**Rule.** {RULES[3]}", ""]
    for figure in ("claim3_detectors.png", "claim3_example.png"):
        if figure in figures:
            lines += [f"![claim 3]({figure})", ""]
    return lines


def _best_detectors(table: pd.DataFrame) -> str:
    by = table.set_index("detector")
    best = by["auroc"].idxmax()
    line = f"Highest AUROC: {best} ({_num(by.loc[best, 'auroc'], '.3f')})"
    if best != ev.PRIMARY:
        line += f"; the meta-state deviation's is {_num(by.loc[ev.PRIMARY, 'auroc'], '.3f')}"
    return line + "."


def _detector_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["detector", "input", "threshold", "detection rate [CI]",
               "median lead, updates [CI]", "false-alarm rate", "alarmed survivors",
               "AUROC [CI]"]  # fmt: skip
    rows = [
        [r.detector, r.input, _num(r.threshold),
         f"{_num(r.detection_rate, '.2f')} {_ci(r.detection_rate_lo, r.detection_rate_hi, '.2f')}",
         f"{_num(r.lead_median, '.0f')} {_ci(r.lead_median_lo, r.lead_median_hi, '.0f')}",
         _num(r.false_alarm_rate, ".3f"), _num(r.alarmed_survivors, ".2f"),
         f"{_num(r.auroc, '.3f')} {_ci(r.auroc_lo, r.auroc_hi, '.3f')}"]
        for r in table.itertuples()
    ]  # fmt: skip
    return headers, rows


def _caveats() -> list[str]:
    return [
        "## Reading these results",
        "",
        "- The verdicts hold for these recipes, perturbations and seeds only; the quick "
        "version's few seeds give wide intervals, which the rules turn into *inconclusive* "
        "rather than a guess.",
        "- The meta-state summarises every telemetry channel, including the learning rate in "
        "force and the performance channels (validation loss or accuracy, episode return): a "
        "learning-rate ramp shows in it from its first step, and a gradual loss of performance "
        "moves it before the collapse rule's threshold is crossed. Alarmed survivors measure "
        "the price: the band flags any departure from unperturbed training, not only the ones "
        "that end in collapse.",
        "- Lead times are capped by the horizon H: an alarm that holds from long before the "
        "collapse counts as H steps of lead.",
        "- A detector whose scores are 0 on most reference steps (CUSUM) cannot be calibrated "
        "to the target false-alarm rate: its threshold is the score quantile, and its realised "
        "false-alarm rate is shown.",
        "",
    ]


# -- figures ------------------------------------------------------------------------------------
def plot_decoupling(results: dict[str, Decoupling], path: Path) -> None:
    """Per paradigm: recipes' mean final performance against mean stability."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes.flat, results.items()):
        ax.scatter(r.recipes["final_p"], r.recipes["stability"], color="tab:blue")
        for row in r.recipes.itertuples():
            label = row.recipe.split(" ", 1)[1]
            ax.annotate(label, (row.final_p, row.stability), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("final performance p (mean over seeds)")
        ax.set_ylabel("stability (1 - mean relative drawdown)")
        ax.set_title(f"{name}: rho = {_num(r.rho, '.2f')} {_ci(r.lo, r.hi, '.2f')}", fontsize=9)
    save_figure(fig, path)


def plot_buffering(results: dict[str, Buffering], path: Path) -> None:
    """Per paradigm: each pair's drawdown without against with the stochasticity knob."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.2), squeeze=False)
    for ax, (name, b) in zip(axes.flat, results.items()):
        for intervention, rows in b.pairs.groupby("intervention"):
            ax.scatter(rows["drawdown_without"], rows["drawdown_with"], s=14, label=intervention)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        d = b.drawdown
        ax.set_title(f"{name}: mean difference {_num(d['mean'], '+.3f')} "
                     f"{_ci(d['mean_lo'], d['mean_hi'], '+.3f')}", fontsize=9)  # fmt: skip
        ax.set_xlabel(f"drawdown, {b.without}")
        ax.set_ylabel(f"drawdown, {b.with_}")
        ax.legend(fontsize=6)
    save_figure(fig, path)


def plot_detectors(results: dict[str, EarlyWarning], path: Path) -> None:
    """Per paradigm: each detector's AUROC and detection rate with their CIs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.4), squeeze=False)
    for ax, (name, w) in zip(axes.flat, results.items()):
        t = w.table
        y = np.arange(len(t))
        for offset, key, color in ((-0.15, "auroc", "tab:blue"),
                                   (0.15, "detection_rate", "tab:orange")):  # fmt: skip
            err = np.abs(np.vstack([t[key] - t[f"{key}_lo"], t[f"{key}_hi"] - t[key]]))
            ax.errorbar(t[key], y + offset, xerr=np.nan_to_num(err), fmt="o", color=color,
                        label=key.replace("_", " "), capsize=2)  # fmt: skip
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_yticks(y, t["detector"], fontsize=7)
        ax.set_xlim(0, 1.02)
        ax.set_title(f"{name} (H = {w.horizon} steps)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def plot_example(results: dict[str, EarlyWarning], path: Path) -> None:
    """Per paradigm: a collapsing run's p and meta-state deviation, with the threshold."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.4), squeeze=False)
    for ax, (name, w) in zip(axes.flat, results.items()):
        collapsed = [t for t in w.traces if t.collapse_onset is not None]
        if not collapsed:
            ax.set_title(f"{name}: no run collapsed", fontsize=9)
            continue
        trace = collapsed[0]
        steps = np.arange(1, len(trace.p) + 1)
        ax.plot(steps, trace.p, color="tab:blue", label="p")
        ax.set_ylabel("p", color="tab:blue")
        ax.set_xlabel("step")
        ax.axvline(trace.collapse_onset, color="black", ls=":", label="collapse onset")
        if trace.ramp_onset is not None:
            ax.axvspan(trace.ramp_onset, steps[-1], color="tab:red", alpha=0.08, label="ramp")
        twin = ax.twinx()
        twin.plot(steps, trace.inputs["deviation"], color="tab:orange")
        twin.axhline(w.primary["threshold"], color="tab:orange", ls="--", lw=0.8)
        twin.set_yscale("log")
        twin.set_ylabel("meta-state deviation (dashed: threshold)", color="tab:orange")
        ax.set_title(f"{name}: seed {trace.seed}, {trace.scenario}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)
