"""Scripted controllers: a fixed schedule of interventions (the audit's way of acting); no-op."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainenv.core.actions import ContinuousMagnitudes, DiscreteMenu
from trainenv.env import TrainEnv


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
        for step in range(env.unwrapped.max_steps):
            obs, reward, terminated, truncated, info = env.step(schedule.action(step))
    """

    def __init__(self, env: Any, plan: Mapping[int, Mapping[str, float]]) -> None:
        self.spec = _unwrap(env).action_spec
        self._actions = {int(step): self._encode(dict(m)) for step, m in plan.items()}
        self._noop = self._encode({})

    def action(self, step: int) -> Any:
        """The action to take at ``step``."""
        return self._actions.get(step, self._noop)

    def _encode(self, magnitudes: dict[str, float]) -> Any:
        if isinstance(self.spec, ContinuousMagnitudes):
            return self.spec.encode(magnitudes)
        assert isinstance(self.spec, DiscreteMenu)
        if len(magnitudes) > 1:
            raise ValueError(f"a discrete menu applies one intervention a step, got {magnitudes}")
        if not magnitudes:
            return 0
        ((name, magnitude),) = magnitudes.items()
        for index, entry in enumerate(self.spec.menu):
            if entry and entry[0].name == name and abs(entry[1] - magnitude) <= 1e-6 * magnitude:
                return index
        on_menu = [(e[0].name, round(e[1], 6)) for e in self.spec.menu if e]
        raise ValueError(f"({name!r}, {magnitude}) is not on the discrete menu: {on_menu}")


class NoOp(Schedule):
    """Never intervene."""

    def __init__(self, env: Any) -> None:
        super().__init__(env, {})


def _unwrap(env: Any) -> TrainEnv:
    inner = getattr(env, "unwrapped", env)
    if not isinstance(inner, TrainEnv):
        raise TypeError(f"expected a trainenv environment, got {type(inner).__name__}")
    return inner
