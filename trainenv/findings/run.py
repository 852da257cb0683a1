"""``trainenv findings``: run the three claims' experiments, resumably, and write the report."""

from __future__ import annotations

import math
import time
from pathlib import Path

from trainenv.audit.runner import run_audit
from trainenv.audit.store import ResultStore
from trainenv.findings.claims import Findings, decoupling, early_warning, recipe_outcomes
from trainenv.findings.config import FindingsConfig, Paradigm, full_config, quick_config
from trainenv.findings.dose import Stochasticity, dose_response
from trainenv.findings.report import write_findings
from trainenv.findings.sampling import grow_seeds
from trainenv.warning.simulation import Trace, simulate_runs, traces_frame

__all__ = ["run_findings"]


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
    traces = _claim3_traces(config, workers, progress, ResultStore(out / "claim3"))
    (out / "data").mkdir(exist_ok=True)
    traces_frame(traces).to_parquet(out / "data" / "claim3_traces.parquet", index=False)
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
    """Claims 1 and 2 on one paradigm, on as many seeds as its sample-size rule asks for: each
    round extends the audit's seeds (the store runs only the new ones) and recomputes both
    claims from every seed so far."""
    n_boot = findings.config.n_boot

    def measure(seeds: int) -> dict[str, float]:
        store = run_audit(paradigm.plan(workers, seeds), out / "audits" / paradigm.name,
                          progress=progress)  # fmt: skip
        widths = {}
        if 1 in paradigm.claims:
            names = [r.name for r in paradigm.grid_recipes()]
            outcomes = recipe_outcomes(store, names, paradigm.onset, seeds)
            result = findings.decoupling[paradigm.name] = decoupling(outcomes, n_boot)
            widths["rho"] = _width(result.lo, result.hi)
        if 2 in paradigm.claims:
            runs = store.runs()
            runs = runs[runs["seed"] < seeds]
            knobs = tuple(
                dose_response(
                    runs,
                    paradigm.base.name,
                    {level: r.name for level, r in paradigm.dose_recipes(knob).items()},
                    knob.name,
                    n_boot,
                )
                for knob in paradigm.stochasticity
            )
            findings.buffering[paradigm.name] = Stochasticity(knobs)
            widths["trend"] = _width(knobs[0].slope_lo, knobs[0].slope_hi)
        return widths

    findings.sample_sizes[paradigm.name] = grow_seeds(paradigm.sample_size, measure)


def _width(lo: float, hi: float) -> float:
    """A CI's width; ``inf`` where it could not be computed (NaN bounds)."""
    width = hi - lo
    return math.inf if math.isnan(width) else width


def _claim3_traces(
    config: FindingsConfig, workers: int, progress: bool | None, store: ResultStore
) -> list[Trace]:
    """Claim 3's runs of every paradigm (:func:`~trainenv.warning.simulation.simulate_runs`,
    backend ``auto``: Digits and CartPole as population members, their calibration runs too;
    TinyLM one run per task)."""
    # The config lists paradigms cheapest first: submitting the costliest runs first keeps
    # the workers busy to the end.
    tasks = [t for p in reversed(config.paradigms) if 3 in p.claims for t in p.warning_tasks()]
    return simulate_runs(tasks, store, workers, progress)
