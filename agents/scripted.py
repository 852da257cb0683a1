"""Scripted controllers: a fixed schedule of interventions (the audit's way of acting); no-op."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.encoding import encode


class Schedule:
    """Apply named interventions at set steps, nothing otherwise.

    Args:
        env: The environment (unwrapped or wrapped) whose action space the actions target.
        plan: ``{step: {intervention name: magnitude}}``; steps count from 0 after ``reset``.
            With a discrete menu, each (name, magnitude) must be on the menu and at most one
            intervention may be given per step.

    Example::

        schedule = Schedule(env, {20: {"lr_shock": 100.0}, 21: {"grad_clip": 0.5}})
        obs, info = env.reset(seed=0)
        schedule.reset()
        while True:
            obs, reward, terminated, truncated, info = env.step(schedule.act(obs, info))
            if terminated or truncated:
                break
    """

    def __init__(self, env: Any, plan: Mapping[int, Mapping[str, float]]) -> None:
        self._actions = {int(step): encode(env, m) for step, m in plan.items()}
        self._noop = encode(env, {})
        self._step = 0

    def reset(self) -> None:
        """Start counting steps from 0 again (call after ``env.reset``)."""
        self._step = 0

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        """The action for the next step (the schedule ignores what it observes)."""
        action = self.action(self._step)
        self._step += 1
        return action

    def action(self, step: int) -> Any:
        """The action to take at ``step``."""
        return self._actions.get(step, self._noop)


class NoOp(Schedule):
    """Never intervene."""

    def __init__(self, env: Any) -> None:
        super().__init__(env, {})
