"""The findings report's claim-3 section: the early-warning design, each detector's table,
and whether the leak-free meta-state beats the logistic baseline."""

from __future__ import annotations

import pandas as pd

from trainenv.audit.formatting import format_interval as _ci
from trainenv.audit.formatting import format_number as _num
from trainenv.audit.formatting import format_table
from trainenv.findings.claims import EarlyWarning, Findings
from trainenv.findings.report_audits import paradigm_of
from trainenv.findings.verdicts import CLAIMS, RULES
from trainenv.warning.evaluation import BASELINE, FULL_METASTATE, PRIMARY
from trainenv.warning.metastates import FULL, LEAK_FREE

__all__ = ["claim3_section", "versus_baseline"]


def claim3_section(findings: Findings, figures: dict[str, str]) -> list[str]:
    lines = [f"## Claim 3: {CLAIMS[3]}", ""]
    if not findings.warning:
        return [*lines, "Not tested in this run.", ""]
    rate = findings.config.false_alarm_rate
    lines += [
        "**Design.** Per seed, one unperturbed reference run of the registered recipe and one "
        "run per *ramp*: a perturbation whose magnitude grows every step from a small to a "
        "large value, then holds (mild ramps that runs survive, severe ones that they do not). "
        "A run collapses when the env's collapse rule fires; the *collapse onset* T is the "
        "first step of the final streak below the rule's threshold.",
        "",
        "**Meta-states.** Two encoders (scaler + whitened PCA of telemetry-window features, "
        "with a reference band of where unperturbed runs' latents lie at each point of "
        "training, fitted as `trainenv calibrate` fits an environment's) are fitted on the "
        "same unperturbed *calibration* runs (seeds apart from the evaluated ones), so they "
        "differ only in the channels they read. The **full meta-state** reads every telemetry "
        "channel, including the performance channels the collapse rule is defined on "
        "(validation accuracy or loss, episode return) and the knob channels a perturbation "
        "sets directly (the learning rate in force): a detector reading those 'precedes "
        "collapse' trivially. The **leak-free meta-state** reads only the channels each "
        "trainer declares as training dynamics (`ChannelSpec.role`); claim 3's verdict is "
        "its deviation's.",
        "",
        "**Detectors** score every step: the **leak-free meta-state deviation** (Mahalanobis "
        "distance of the latent from the band at the same training progress, what "
        "`info['deviation']` reports with that encoder), the **full meta-state deviation** "
        "(the same on every channel), the **leak-free self-deviation** (distance of the "
        "leak-free latent from the run's own recent history), the baselines practitioners "
        "use — a **loss spike** rule (Lightning), a **gradient-norm z-score** (ZClip), "
        "**CUSUM** on the loss — and a learned baseline, **logistic regression** "
        "(scikit-learn, standardised inputs, balanced classes) on the very window features "
        "the leak-free meta-state reads, trained to predict 'collapse within H steps'. Each "
        f"is calibrated to a {rate:.0%} per-step false-alarm rate on reference runs, "
        "cross-fitted by seed: thresholds for a seed come from the other seeds' reference "
        "runs, so the false-alarm rate shown is out of sample; the logistic model scoring a "
        "seed is trained on the other seeds' runs only, and the reference scores its "
        "threshold comes from are out of fold too. A collapse is *detected* if an alarm "
        "falls in the steps T - H .. T; the *lead time* is T minus the first such alarm, in "
        "updates (so at most H steps' worth). *Alarmed survivors*: share of perturbed runs "
        "that did not collapse yet alarmed after the ramp began. AUROC: of the score for "
        "'collapse onset within H steps', over the steps of reference runs and the perturbed "
        "runs' steps from the ramp's onset up to T; *vs leak-free*: this AUROC minus the "
        "leak-free meta-state's, paired over the same seed resamples.",
        "",
    ]
    for name, w in findings.warning.items():
        paradigm = paradigm_of(findings, name)
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
            _encoders(w),
            "",
            format_table(*_detector_rows(w.table), markdown=True),
            "",
            _best_detectors(w.table),
            "",
            _against_baseline(w.table),
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
    if best != PRIMARY:
        line += f"; the leak-free meta-state deviation's is {_num(by.loc[PRIMARY, 'auroc'], '.3f')}"
    return line + "."


def _encoders(w: EarlyWarning) -> str:
    """Which channels each meta-state reads, and its latent dimension."""
    full, free = w.encoders[FULL], w.encoders[LEAK_FREE]
    left_out = [c for c in full.channels if c not in free.channels]
    return (
        f"Meta-states fitted on {w.calibration_runs} calibration runs: leak-free, "
        f"{free.n_components} latent dimensions over {', '.join(free.channels)}; full, "
        f"{full.n_components} over every channel (the leak-free one leaves out "
        f"{', '.join(left_out) or 'nothing'})."
    )


def versus_baseline(table: pd.DataFrame) -> tuple[str, float, float]:
    """The leak-free meta-state's AUROC minus the logistic baseline's, as text, and its CI."""
    base = table.set_index("detector").loc[BASELINE]
    lo, hi = -base.auroc_vs_primary_hi, -base.auroc_vs_primary_lo
    return f"{_num(-base.auroc_vs_primary, '+.3f')} {_ci(lo, hi, '+.3f')}", lo, hi


def _against_baseline(table: pd.DataFrame) -> str:
    """Whether the leak-free meta-state beats the logistic baseline, said plainly."""
    full = table.set_index("detector").loc[FULL_METASTATE]
    difference, lo, hi = versus_baseline(table)
    if lo > 0:
        verdict = (
            "The leak-free meta-state beats the logistic-regression baseline: AUROC "
            f"{difference} above it."
        )
    elif hi < 0:
        verdict = (
            f"**The leak-free meta-state does not beat the logistic-regression baseline**: "
            f"the baseline's AUROC is higher (leak-free minus baseline {difference})."
        )
    else:
        verdict = (
            f"**The leak-free meta-state does not beat the logistic-regression baseline**: "
            f"the AUROC difference (leak-free minus baseline) {difference} includes 0."
        )
    leak = (
        f"The full meta-state's AUROC minus the leak-free one's: "
        f"{_num(full.auroc_vs_primary, '+.3f')} "
        f"{_ci(full.auroc_vs_primary_lo, full.auroc_vs_primary_hi, '+.3f')} (what reading "
        "the performance and knob channels adds)."
    )
    return f"{verdict} {leak}"


def _detector_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["detector", "input", "threshold", "detection rate [CI]",
               "median lead, updates [CI]", "false-alarm rate", "alarmed survivors",
               "AUROC [CI]", "vs leak-free [CI]"]  # fmt: skip
    rows = [
        [r.detector, r.input, _num(r.threshold),
         f"{_num(r.detection_rate, '.2f')} {_ci(r.detection_rate_lo, r.detection_rate_hi, '.2f')}",
         f"{_num(r.lead_median, '.0f')} {_ci(r.lead_median_lo, r.lead_median_hi, '.0f')}",
         _num(r.false_alarm_rate, ".3f"), _num(r.alarmed_survivors, ".2f"),
         f"{_num(r.auroc, '.3f')} {_ci(r.auroc_lo, r.auroc_hi, '.3f')}",
         "-" if r.detector == PRIMARY else
         f"{_num(r.auroc_vs_primary, '+.3f')} "
         f"{_ci(r.auroc_vs_primary_lo, r.auroc_vs_primary_hi, '+.3f')}"]
        for r in table.itertuples()
    ]  # fmt: skip
    return headers, rows
