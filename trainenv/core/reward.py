"""The reward: progress in performance minus penalties for instability and intervention cost."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RewardSpec(BaseModel):
    """One float per step, in units of normalised performance ``p`` (0 chance, 1 ceiling)::

        r_t = (p_t - p_{t-1}) - drawdown_weight * (best_t - p_t) - cost_weight * cost_t
        r_t = -collapse_penalty                       if the run collapsed at step t

    where ``best_t`` is the best ``p`` so far and ``cost_t`` the summed ``cost`` of the
    interventions applied at step t.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    drawdown_weight: float = Field(0.05, ge=0.0)
    cost_weight: float = Field(1.0, ge=0.0)
    collapse_penalty: float = Field(10.0, ge=0.0)

    def __call__(self, p_prev: float, p: float, best: float, cost: float, collapsed: bool) -> float:
        if collapsed:
            return -self.collapse_penalty
        return (p - p_prev) - self.drawdown_weight * (best - p) - self.cost_weight * cost
