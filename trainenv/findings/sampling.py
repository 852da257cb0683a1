"""The sample-size rule of claims 1 and 2: seeds are added in batches until every CI-width
target is met or a stated cap is reached.

An audit's store is resumable and run ids do not depend on how many seeds a plan lists, so
growing ``seeds`` from ``n`` to ``n + step`` runs only the new seeds' runs. The rule is applied
per paradigm; its parameters are data (``sample_size:`` in ``paradigms.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SampleSize", "SampleSizeRule", "Sampling", "grow_seeds"]


class SampleSizeRule(BaseModel):
    """Seeds: start with ``start``, add ``step`` while a target is unmet, never above ``cap``.

    Attributes:
        start: Seeds of the first batch (>= 2).
        step: Seeds added per round (>= 1).
        cap: The most seeds (>= start); ``cap == start`` fixes the sample size.
        rho_ci_width: Claim 1's target: the width of the CI of Spearman's rho, in (0, 2]
            (``None``: no target).
        trend_ci_width: Claim 2's target: the width of the dose-response trend's CI, in p per
            level step, > 0 (``None``: no target).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(ge=2)
    step: int = Field(default=8, ge=1)
    cap: int = Field(ge=2)
    rho_ci_width: float | None = Field(default=None, gt=0.0, le=2.0)
    trend_ci_width: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _cap_above_start(self) -> SampleSizeRule:
        if self.cap < self.start:
            raise ValueError(f"cap must be >= start ({self.start}), got {self.cap}")
        return self

    def targets(self) -> dict[str, float]:
        """The CI-width targets set, by the name :func:`grow_seeds`' measurements use."""
        named = {"rho": self.rho_ci_width, "trend": self.trend_ci_width}
        return {k: v for k, v in named.items() if v is not None}

    def describe(self) -> str:
        """The rule in words, for the report."""
        targets = self.targets()
        said = " and ".join(
            f"the {'CI of rho' if k == 'rho' else 'trend CI'} at most {v:g} wide"
            for k, v in targets.items()
        )
        if self.cap == self.start:
            return f"{self.start} seeds (fixed)"
        return (
            f"{self.start} seeds, then {self.step} more at a time until {said or 'never'}, "
            f"at most {self.cap}"
        )


@dataclass
class SampleSize:
    """The rule's course on one paradigm: the seeds of each round and the CI widths measured
    after it (``inf`` where a statistic could not be computed)."""

    rule: SampleSizeRule
    rounds: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return self.rounds[-1][0]

    @property
    def met(self) -> bool:
        """Whether the last round met every target."""
        return _met(self.rule, self.rounds[-1][1])

    def describe(self) -> str:
        """What happened, for the report."""
        steps = "; ".join(
            f"{n} seeds: " + (", ".join(f"{k} CI width {w:.3f}" for k, w in widths.items()) or "-")
            for n, widths in self.rounds
        )
        if not self.rule.targets():
            ending = "no target: a fixed sample size"
        elif self.met:
            ending = "every target met"
        else:
            ending = "cap reached with a target unmet"
        return f"{steps} ({ending})."


Sampling = Callable[[int], Mapping[str, float]]
"""Runs (or reads back) the experiment with ``n`` seeds and returns its CI widths by name."""


def _met(rule: SampleSizeRule, widths: Mapping[str, float]) -> bool:
    return all(widths.get(k, float("inf")) <= target for k, target in rule.targets().items())


def grow_seeds(rule: SampleSizeRule, measure: Sampling) -> SampleSize:
    """Apply the rule: ``measure(start)``, then ``measure(n + step)`` (capped) while a target
    is unmet and ``n < cap``. A width ``measure`` cannot compute counts as unmet."""
    course = SampleSize(rule)
    n = rule.start
    while True:
        widths = dict(measure(n))
        course.rounds.append((n, widths))
        if _met(rule, widths) or n >= rule.cap:
            return course
        n = min(n + rule.step, rule.cap)
