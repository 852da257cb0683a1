"""The three claims (ours and the paper's words) and their verdict rules: each verdict
follows from confidence intervals by a rule stated in words (:data:`RULES`, printed in the
report), never set by hand."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "CLAIMS",
    "CONFIDENCE",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "OVERALL_RULE",
    "PAPER",
    "RULES",
    "SUPPORTED",
    "overall",
    "verdict_buffering",
    "verdict_decoupling",
    "verdict_dose",
    "verdict_warning",
]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
CONFIDENCE = 0.95
STRONG = 0.5  # |Spearman rho| from here on is a strong association
NEGLIGIBLE = 0.02  # a mean drawdown difference within +-this (units of p) is immaterial
MIN_COLLAPSES = 5  # fewer collapses than this cannot test claim 3
MIN_SEEDS = 5  # a bootstrap over fewer seeds has too few distinct resamples to test claim 2
FALSE_ALARM_RATE = 0.02  # every detector's calibrated per-step false-alarm rate

CLAIMS = {
    1: "High final performance is frequently decoupled from training stability.",
    2: "Controlled stochasticity buffers learning dynamics.",
    3: "Deviations of the low-dimensional meta-state precede performance collapse.",
}
PAPER = {
    1: "high final performance is frequently decoupled from training stability",
    2: "controlled stochasticity consistently buffers learning dynamics across paradigms",
    3: "deviations in low-dimensional latent meta-states systematically precede observable "
    "performance collapse",
}
"""The paper's statement of each claim, verbatim from its abstract (``/work/shared/seed``)."""

RULES = {
    1: (
        f"**supported** if the {CONFIDENCE:.0%} CI of Spearman's rho lies inside "
        f"(-{STRONG}, {STRONG}): at most a moderate association either way; **not supported** "
        f"if it lies entirely beyond -{STRONG} or +{STRONG} (performance and stability go "
        "together, or trade off); **inconclusive** otherwise."
    ),
    2: (
        "each level of a stochasticity knob is compared with the recipe without it, paired by "
        "seed and perturbation; per level, the effect is the mean paired drawdown difference "
        f"(with minus without, units of p), *buffering* where its {CONFIDENCE:.0%} CI lies "
        f"below 0 and not inside [-{NEGLIGIBLE}, {NEGLIGIBLE}]. The trend is the slope of "
        "that effect against the level's rank (off = 0), with a bootstrap CI over seeds. "
        f"**supported** if the trend's CI lies below 0 and at least one level buffers; "
        f"**not supported** if no level buffers and the trend's CI lies above 0 (the wrong "
        f"direction) or inside [-{NEGLIGIBLE}, {NEGLIGIBLE}] (no material trend); "
        f"**inconclusive** otherwise, and whenever fewer than {MIN_SEEDS} seeds were paired. "
        "A paradigm's verdict is its first knob's; the collapse-rate differences are reported "
        "alongside."
    ),
    3: (
        f"for the leak-free meta-state deviation detector at a {FALSE_ALARM_RATE:.0%} "
        "false-alarm rate: "
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


def verdict_dose(lo: float, hi: float, levels: Sequence[str], seeds: int) -> str:
    """Claim 2 from the CI ``[lo, hi]`` of the dose-response trend (p per level step), each
    level's :func:`verdict_buffering` and the number of paired seeds (see :data:`RULES`)."""
    if math.isnan(lo) or math.isnan(hi) or seeds < MIN_SEEDS:
        return INCONCLUSIVE
    buffers = SUPPORTED in levels
    if hi < 0 and buffers:
        return SUPPORTED
    if not buffers and (lo > 0 or (lo >= -NEGLIGIBLE and hi <= NEGLIGIBLE)):
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
