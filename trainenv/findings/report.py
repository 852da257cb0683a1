"""The findings report: ``report.md`` with each claim's design, tables, verdict and rule, the
figures and the data tables behind them. This module assembles the page (the verdicts and the
comparison with the paper); :mod:`~trainenv.findings.report_audits` writes claims 1 and 2's
sections and the sample-size rule's, :mod:`~trainenv.findings.report_warning` claim 3's."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from trainenv.audit.formatting import format_interval as _ci
from trainenv.audit.formatting import format_number as _num
from trainenv.audit.formatting import format_table
from trainenv.audit.html import write_html
from trainenv.findings.claims import Findings
from trainenv.findings.config import (
    FULL_EXPECTED_MINUTES,
    FindingsConfig,
    full_config,
    quick_config,
)
from trainenv.findings.figures import plot_buffering, plot_decoupling, plot_detectors, plot_example
from trainenv.findings.report_audits import claim1_section, claim2_section, sample_size_section
from trainenv.findings.report_warning import claim3_section, versus_baseline
from trainenv.findings.verdicts import CLAIMS, CONFIDENCE, OVERALL_RULE, PAPER
from trainenv.warning.evaluation import PRIMARY

__all__ = ["CLAIMS", "PAPER", "SOURCE", "write_findings"]

SOURCE = (
    "Li, Yang, Yao and Zhang (2026), *Training instability in deep learning follows "
    "low-dimensional dynamical principles*, arXiv:2601.13160 (StabilityBench)."
)


def write_findings(findings: Findings, out: Path) -> Path:
    """Write ``report.md``, the figures, ``report.html`` (the same, one self-contained page)
    and the data tables (``data/``) under ``out``
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
    write_html(report)
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
        pairs = {n: pd.concat([d.pairs for d in b.knobs]) for n, b in findings.buffering.items()}
        tagged(pairs).to_csv(data / "claim2_pairs.csv", index=False)
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
    for number, envs in sorted(by_claim.items()):
        groups.setdefault(tuple(envs), []).append(number)
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
        "## The paper's claims against ours",
        "",
        _comparison_table(findings),
        "",
        "Effect sizes: claim 1, Spearman's rho between recipes' final performance and "
        "stability (decoupled: near 0); claim 2, the dose-response trend of the first "
        "stochasticity knob (the slope of the mean paired drawdown difference, with minus "
        "without, against the level's rank; p per level step; buffering: below 0) and the "
        "difference at each level; claim "
        "3, the AUROC of the leak-free meta-state deviation for 'collapse within H steps' "
        "(0.5: chance) and its difference from the logistic-regression baseline's (above 0: "
        "the meta-state does better).",
        "",
    ]
    lines += claim1_section(findings, figures) + claim2_section(findings, figures)
    lines += claim3_section(findings, figures) + sample_size_section(findings) + _caveats()
    return "\n".join(lines) + "\n"


def _verdict_table(findings: Findings) -> str:
    rows = []
    for claim, (per, verdict) in findings.verdicts().items():
        tested = ", ".join(f"{name}: {v}" for name, v in per.items()) or "not tested"
        rows.append([f"{claim}. {CLAIMS[claim]}", tested, f"**{verdict}**" if per else "-"])
    return format_table(["claim", "per paradigm", "overall"], rows, markdown=True)


def _comparison_table(findings: Findings) -> str:
    """Per claim and paradigm: the paper's statement, our verdict, the effect size and CI."""
    rows = []
    for claim, (per, _) in findings.verdicts().items():
        statement = f'{claim}. "{PAPER[claim]}"'
        if not per:
            rows.append([statement, "-", "not tested in this run", "-"])
        for i, (name, verdict) in enumerate(per.items()):
            rows.append([statement if i == 0 else "", name, f"**{verdict}**",
                         _effect(findings, claim, name)])  # fmt: skip
    return format_table(["the paper says", "paradigm", "our verdict", "effect size [CI]"], rows,
                        markdown=True)  # fmt: skip


def _effect(findings: Findings, claim: int, name: str) -> str:
    if claim == 1:
        d = findings.decoupling[name]
        return f"rho {_num(d.rho, '+.2f')} {_ci(d.lo, d.hi, '+.2f')}"
    if claim == 2:
        dose = findings.buffering[name].primary
        per_level = "; ".join(
            f"{level:g}: {_num(e.drawdown['mean'], '+.3f')} "
            f"{_ci(e.drawdown['mean_lo'], e.drawdown['mean_hi'], '+.3f')}"
            for level, e in zip(dose.levels, dose.effects)
        )
        return (f"{dose.knob} trend {_num(dose.slope, '+.4f')} "
                f"{_ci(dose.slope_lo, dose.slope_hi, '+.4f')} p per level; drawdown difference "
                f"at {per_level}")  # fmt: skip
    table = findings.warning[name].table
    p = table.set_index("detector").loc[PRIMARY]
    return (f"AUROC {_num(p.auroc, '.3f')} {_ci(p.auroc_lo, p.auroc_hi, '.3f')}; minus the "
            f"logistic baseline's {versus_baseline(table)[0]}")  # fmt: skip


def _caveats() -> list[str]:
    return [
        "## Reading these results",
        "",
        "- The verdicts hold for these recipes, perturbations and seeds only; the quick "
        "version's few seeds give wide intervals, which the rules turn into *inconclusive* "
        "rather than a guess.",
        "- Claim 1's CI resamples recipes as well as seeds (the claim is about recipes in "
        "general): with n recipes and rho near 0 its width is about 4 / sqrt(n - 3) however "
        "many seeds there are, so a 0.5-wide CI near 0 takes some 60 recipes; more seeds only "
        "steady each recipe's means. The sample-size rule adds seeds, so it stops at its cap "
        "where the recipes, not the seeds, limit the width.",
        "- Claim 2's drawdown is measured against the run's own unperturbed fork: a knob that "
        "lowers that fork's performance leaves less to lose, so its drawdowns shrink even if "
        "it does not protect the run; read the drawdown effect beside the collapse-rate "
        "difference (a knob can lower one and raise the other).",
        "- Claim 3's verdict reads the leak-free meta-state, which leaves out the performance "
        "and knob channels; its dynamics channels still respond to some perturbations at "
        "once (the update ratio grows with a learning-rate ramp: the weights do move faster), "
        "so an alarm can mean 'perturbed' rather than 'about to collapse'. Alarmed survivors "
        "measure that price: the band flags any departure from unperturbed training, not only "
        "the ones that end in collapse.",
        "- The logistic baseline is trained on collapses of the same ramps (other seeds): it "
        "knows what a collapse looks like here, which the unsupervised meta-state does not.",
        "- Thresholds come from the other seeds' few reference runs: with few seeds a held-out "
        "run can alarm well above the target rate (the false-alarm column shows by how much).",
        "- Lead times are capped by the horizon H: an alarm that holds from long before the "
        "collapse counts as H steps of lead.",
        "- A detector whose scores are 0 on most reference steps (CUSUM) cannot be calibrated "
        "to the target false-alarm rate: its threshold is the score quantile, and its realised "
        "false-alarm rate is shown.",
        "",
    ]
