"""The collapse rule: when a run counts as collapsed (the episode's ``terminated``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class CollapseState:
    """What the rule remembers between steps."""

    best: float = 0.0  # best normalised performance so far
    below: int = 0  # consecutive steps below the threshold


class CollapseRule(BaseModel):
    """A run collapses when training goes non-finite, or when its normalised performance
    ``p`` (0 at chance, 1 at the ceiling) stays below ``(1 - drop) * best`` for ``patience``
    consecutive steps, once ``best >= arm_at`` (so that early noise before any learning is not
    called a collapse).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    drop: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of the best lost")
    patience: int = Field(5, ge=1, description="consecutive steps below the threshold")
    arm_at: float = Field(0.2, ge=0.0, le=1.0, description="best p needed before the rule arms")

    def threshold(self, best: float) -> float:
        return (1.0 - self.drop) * best

    def update(
        self, state: CollapseState, p: float, diverged: bool
    ) -> tuple[CollapseState, str | None]:
        """Return the new state and the collapse reason (``None`` while the run is alive)."""
        if diverged:
            return state, "non-finite"
        best = max(state.best, p)
        below = state.below + 1 if best >= self.arm_at and p < self.threshold(best) else 0
        reason = "performance" if below >= self.patience else None
        return CollapseState(best, below), reason
