"""Rule-based controllers drawn from practice.

Each watches ``info`` (telemetry, performance) step by step and answers with an action:

- :class:`ClipOnGradSpike` — switch gradient clipping on when the gradient norm spikes
  (ZClip-style z-score, :class:`~trainenv.warning.GradNormZScore`);
- :class:`BackoffOnLossSpike` — back the learning rate off when the loss spikes
  (:class:`~trainenv.warning.LossSpike`);
- :class:`RollbackOnDrop` — roll back to the last good fork when performance falls well below
  its best;
- :class:`ForkSearch` — a light population-based exploit/explore: every few steps, fork the run
  once per candidate stabilizer, continue each fork briefly, and apply the best candidate;
- :class:`BackoffAndRollbackOnAlarm` — for :mod:`trainenv.monitor` on a run of your own: when
  the monitor alarms, back the learning rate off and roll back to the last good checkpoint.

All share the controller protocol of :mod:`agents.scripted`: ``reset()``, ``act(obs, info)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agents.encoding import encode, unwrap
from trainenv.warning import Detector, GradNormZScore, LossSpike

LOSS_CHANNELS = ("train_loss", "loss", "critic_loss", "value_loss")


class _Rule:
    """A controller that applies ``{intervention: magnitude}`` when ``fires(info)``."""

    def __init__(self, env: Any, magnitudes: Mapping[str, float]) -> None:
        self.env = env
        self._action = encode(env, magnitudes, exact=False)
        self._noop = encode(env, {})

    def reset(self) -> None:
        """Forget the previous episode."""

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        return self._action if self.fires(info) else self._noop

    def fires(self, info: Mapping[str, Any]) -> bool:
        raise NotImplementedError


class _DetectorRule(_Rule):
    def __init__(
        self, env: Any, magnitudes: Mapping[str, float], detector: Detector, channel: str
    ) -> None:
        super().__init__(env, magnitudes)
        channels = list(unwrap(env).trainer.channel_names)
        if channel not in channels:
            raise ValueError(f"channel {channel!r} is not in the run's telemetry: {channels}")
        self.detector, self.channel = detector, channel

    def reset(self) -> None:
        self.detector.reset()

    def fires(self, info: Mapping[str, Any]) -> bool:
        if "telemetry" not in info or info.get("updates", 0) == 0:
            return False  # the reset observation: no telemetry yet
        return self.detector.alarm(self.detector.update(info["telemetry"][self.channel]))


class ClipOnGradSpike(_DetectorRule):
    """Clip the gradient norm to ``clip`` when its z-score exceeds the detector's threshold."""

    def __init__(self, env: Any, clip: float = 0.5, detector: Detector | None = None) -> None:
        super().__init__(env, {"grad_clip": clip}, detector or GradNormZScore(3.0), "grad_norm")


class BackoffOnLossSpike(_DetectorRule):
    """Multiply the learning rate by ``factor`` when the loss spikes above its running mean.

    ``channel`` defaults to the run's first loss channel among :data:`LOSS_CHANNELS`.
    """

    def __init__(
        self,
        env: Any,
        factor: float = 0.1,
        detector: Detector | None = None,
        channel: str | None = None,
    ) -> None:
        if channel is None:
            names = list(unwrap(env).trainer.channel_names)
            channel = next((c for c in LOSS_CHANNELS if c in names), "")
        super().__init__(env, {"lr_backoff": factor}, detector or LossSpike(0.5), channel)


class RollbackOnDrop(_Rule):
    """Roll back when normalised performance ``p`` falls below ``(1 - drop) * best_p``
    (after ``best_p`` reached ``arm_at``), at most once every ``cooldown`` steps."""

    def __init__(self, env: Any, drop: float = 0.3, arm_at: float = 0.2, cooldown: int = 5) -> None:
        if not 0 < drop < 1:
            raise ValueError(f"drop must be in (0, 1), got {drop}")
        super().__init__(env, {"rollback": 1.0})
        self.drop, self.arm_at, self.cooldown = drop, arm_at, cooldown
        self.reset()

    def reset(self) -> None:
        self._since = self.cooldown

    def fires(self, info: Mapping[str, Any]) -> bool:
        self._since += 1
        best = info.get("best_p", 0.0)
        dropped = best >= self.arm_at and info.get("p", best) < (1 - self.drop) * best
        if dropped and self._since > self.cooldown:
            self._since = 0
            return True
        return False


class ForkSearch:
    """Population-based exploit/explore over forks of the live run.

    Every ``interval`` steps, fork the run once per candidate (``{}`` is the no-op), apply the
    candidate and continue each fork with no-ops for ``horizon`` steps, then apply the candidate
    whose fork reached the highest normalised performance (ties: the first, so no-op wins
    ties). Costs ``len(candidates) * horizon`` extra steps per decision.

    It forks the single-run env it was built on, so :func:`agents.evaluate.evaluate` runs it
    one episode at a time (``needs_single_env``), never as a population member.
    """

    needs_single_env = True

    def __init__(
        self,
        env: Any,
        candidates: Sequence[Mapping[str, float]] = ({}, {"lr_backoff": 0.1}, {"grad_clip": 0.5}),
        interval: int = 5,
        horizon: int = 3,
    ) -> None:
        if interval < 1 or horizon < 1:
            raise ValueError(f"interval and horizon must be >= 1, got {interval}, {horizon}")
        self.env = unwrap(env)
        self.candidates = [dict(c) for c in candidates]
        self._actions = [encode(env, c, exact=False) for c in self.candidates]
        self._noop = encode(env, {})
        self.interval, self.horizon = interval, horizon
        self.reset()

    def reset(self) -> None:
        self._step = 0

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        self._step += 1
        if (self._step - 1) % self.interval:
            return self._noop
        scores = [self._lookahead(action) for action in self._actions]
        return self._actions[scores.index(max(scores))]

    def _lookahead(self, action: Any) -> float:
        fork = self.env.fork()
        _, _, terminated, truncated, info = fork.step(action)
        for _ in range(self.horizon - 1):
            if terminated or truncated:
                break
            _, _, terminated, truncated, info = fork.step(self._noop)
        return -float("inf") if terminated and info["collapse"] else float(info["p"])


class BackoffAndRollbackOnAlarm:
    """On a :class:`~trainenv.monitor.StabilityMonitor` alarm (``info["alarm"]``), back the
    learning rate off to ``factor`` and roll back, at most once per ``cooldown`` updates.

    Answers ``{name: magnitude}``, which a monitor's actor applies to the live run: the joint
    reaction that saves a run from a learning-rate shock (measured on the envs: backing off
    alone or rolling back alone left about half the shocked runs collapsed).
    """

    def __init__(self, factor: float = 0.01, cooldown: int = 10) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        if cooldown < 1:
            raise ValueError(f"cooldown must be >= 1, got {cooldown}")
        self.factor, self.cooldown = factor, cooldown
        self.reset()

    def reset(self) -> None:
        self._last = -self.cooldown

    def act(self, obs: Any, info: Mapping[str, Any]) -> dict[str, float]:
        if info["alarm"] and info["updates"] - self._last >= self.cooldown:
            self._last = info["updates"]
            return {"lr_backoff": self.factor, "rollback": 1.0}
        return {}
