"""The findings report's sections on the audits: claim 1 (decoupling), claim 2 (the
dose-response of each stochasticity knob) and the sample-size rule that set their seeds."""

from __future__ import annotations

import pandas as pd

from trainenv.audit.formatting import format_interval as _ci
from trainenv.audit.formatting import format_number as _num
from trainenv.audit.formatting import format_table
from trainenv.findings.claims import Findings
from trainenv.findings.config import Paradigm
from trainenv.findings.verdicts import CLAIMS, CONFIDENCE, RULES

__all__ = ["claim1_section", "claim2_section", "paradigm_of", "sample_size_section"]


def paradigm_of(findings: Findings, name: str) -> Paradigm:
    return next(p for p in findings.config.paradigms if p.name == name)


def _perturbations(paradigm: Paradigm) -> str:
    return ", ".join(
        f"{g.name} x{{{', '.join(f'{m:g}' for m in g.magnitudes)}}}" for g in paradigm.interventions
    )


def claim1_section(findings: Findings, figures: dict[str, str]) -> list[str]:
    lines = [f"## Claim 1: {CLAIMS[1]}", ""]
    if not findings.decoupling:
        return [*lines, "Not tested in this run.", ""]
    lines += [
        "**Design.** For each paradigm, a grid of recipes (the registered one, variations of "
        "its learning rate, batch size or epochs, width and the algorithm's own stabilizers, "
        "and claim 2's stochasticity levels) x seeds is audited: each run trains "
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
        paradigm = paradigm_of(findings, name)
        lines += [
            f"### {name} ({paradigm.env})",
            "",
            f"{len(result.recipes)} recipes x {_seeds(findings, name)} seeds; perturbations "
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


def claim2_section(findings: Findings, figures: dict[str, str]) -> list[str]:
    lines = [f"## Claim 2: {CLAIMS[2]}", ""]
    if not findings.buffering:
        return [*lines, "Not tested in this run.", ""]
    knobs = "; ".join(
        f"{', '.join(k.name for k in paradigm_of(findings, name).stochasticity)} ({name})"
        for name in findings.buffering
    )
    lines += [
        "**Design: dose-response.** The registered recipe is audited without and with each "
        "of its trainer's stochasticity knobs held on for the whole run (on the shared prefix "
        f"and on both forks of every pair), at three or more levels: {knobs}. Every level "
        "gets the same perturbations, seeds, onset and horizon (common random numbers); a "
        "perturbed run at a level is paired with the run without the knob of the same seed, "
        "perturbation and magnitude. Drawdown is each run's largest gap below its own "
        "unperturbed fork (units of p); collapse is the env's collapse rule firing or no "
        "recovery by the end of the horizon. Effects are with minus without: negative "
        "means the knob buffers. d_z is the mean over the standard deviation of the paired "
        "differences. The *trend* is the least-squares slope of the mean drawdown difference "
        "against the level's rank (off 0, then 1, 2, ...), in p per level step, its CI a "
        "bootstrap over seeds (a seed's pairs at every level resampled together).",
        "",
    ]
    trend_rows, level_rows = [], []
    for name, result in findings.buffering.items():
        for i, dose in enumerate(result.knobs):
            primary = " (verdict)" if i == 0 and len(result.knobs) > 1 else ""
            slope = f"{_num(dose.slope, '+.4f')} {_ci(dose.slope_lo, dose.slope_hi, '+.4f')}"
            levels = ", ".join(f"{v:g}" for v in dose.levels)
            trend_rows.append([name, f"{dose.knob}{primary}", levels, slope, f"**{dose.verdict}**"])
            for level, b in zip(dose.levels, dose.effects):
                d, c, pairs = b.drawdown, b.collapse, b.pairs
                level_rows.append([
                    name, f"{dose.knob}={level:g}", str(int(d["pairs"])),
                    f"{_num(pairs['drawdown_without'].mean())} / "
                    f"{_num(pairs['drawdown_with'].mean())}",
                    f"{_num(d['mean'], '+.3f')} {_ci(d['mean_lo'], d['mean_hi'], '+.3f')}",
                    f"{_num(d['d_z'], '+.2f')} {_ci(d['d_z_lo'], d['d_z_hi'], '+.2f')}",
                    f"{_num(pairs['collapsed_without'].mean(), '.2f')} / "
                    f"{_num(pairs['collapsed_with'].mean(), '.2f')}",
                    f"{_num(c['mean'], '+.2f')} {_ci(c['mean_lo'], c['mean_hi'], '+.2f')}",
                    b.verdict,
                ])  # fmt: skip
    lines += [
        format_table(
            ["paradigm", "knob", "levels", "trend, p per level step [CI]", "verdict"],
            trend_rows,
            markdown=True,
        ),  # fmt: skip
        "",
        "Each level against the recipe without the knob:",
        "",
        format_table(
            [
                "paradigm",
                "level",
                "pairs",
                "drawdown without / with",
                "mean difference [CI]",
                "d_z [CI]",
                "collapse rate without / with",
                "difference [CI]",
                "level buffers?",
            ],
            level_rows,
            markdown=True,
        ),  # fmt: skip
        "",
    ]
    for name in findings.buffering:
        paradigm = paradigm_of(findings, name)
        lines.append(
            f"- {name}: {paradigm.env}, {_seeds(findings, name)} seeds, perturbations "
            f"{_perturbations(paradigm)}, onset {paradigm.onset}, horizon {paradigm.horizon}."
        )
    lines += ["", f"**Rule.** {RULES[2]}", ""]
    if "claim2_stochasticity.png" in figures:
        lines += ["![claim 2](claim2_stochasticity.png)", ""]
    return lines


def _seeds(findings: Findings, name: str) -> int:
    """The seeds claims 1 and 2 used on a paradigm (its sample-size rule's last round)."""
    if name in findings.sample_sizes:
        return findings.sample_sizes[name].seeds
    return paradigm_of(findings, name).sample_size.start


def sample_size_section(findings: Findings) -> list[str]:
    """The sample-size rule of claims 1 and 2 and what it did on each paradigm."""
    lines = [
        "## Sample sizes",
        "",
        "Claims 1 and 2 get their seeds by a rule, not by hand: each paradigm starts with a "
        "batch of seeds and adds a batch at a time (the audit's store is resumable, so only "
        "the new seeds run) until every CI-width target is met — the CI of Spearman's rho "
        "(claim 1) and of the dose-response trend of the first knob (claim 2) — or a stated "
        "cap is reached. The rule and its parameters are in `trainenv/findings/paradigms.yaml`.",
        "",
    ]
    for paradigm in findings.config.paradigms:
        if not {1, 2} & set(paradigm.claims):
            continue
        course = findings.sample_sizes.get(paradigm.name)
        ran = f" Ran: {course.describe()}" if course else ""
        lines.append(f"- {paradigm.name}: {paradigm.sample_size.describe()}.{ran}")
    return [*lines, ""]
