"""The monitor inside stable-baselines3's ``learn()``: :class:`SB3MonitorCallback`.

Telemetry per update (one rollout and its training for on-policy algorithms; one
``collect_rollouts`` and the gradient steps after it for off-policy ones) — the channels of
trainenv's SB3 trainer: the algorithm's ``train/<name>`` losses from the model's logger
(:data:`~trainenv.trainers.sb3_settings.LOSS_CHANNELS`), then ``grad_norm`` (before clipping,
mean over the update's optimizer steps), ``update_ratio``, ``weight_norm``, ``episode_return``
(mean true return of the last 10 finished episodes; 0 before any) and ``lr``.

An update's losses are in the logger from its training until the next dump, so the callback
reads them when the next rollout starts (and at the end of ``learn``). Gradient clipping moves
into an optimizer step hook (``max_grad_norm`` set to ``inf`` on the model, the same norm
clipped in the hook), where the norm before clipping can be read — as trainenv's trainer does.

Alarms and actions go to the model's logger (``self.logger.record("monitor/...")``: TensorBoard
and the other SB3 outputs show them at the next dump) and to the Parquet table when ``log_dir``
is set. Acting (off unless a ``policy`` is given): ``lr_backoff`` scales the learning-rate
schedule, ``grad_clip`` clips tighter than the recipe, ``rollback`` restores the policy's
weights and the optimizers' state from the last good in-memory checkpoint (not the rollout or
replay buffer, nor the environments).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from trainenv.monitor.actions import Policy
from trainenv.monitor.adapter import Watch
from trainenv.monitor.monitor import StabilityMonitor
from trainenv.monitor.weights import WeightChange
from trainenv.trainers.sb3_learner import GradMonitor, ScaledSchedule, optimizers, trained_weights
from trainenv.trainers.sb3_settings import COMMON_CHANNELS, loss_channels_of
from trainenv.trainers.torch import clone_tree

RETURN_EPISODES = 10  # episodes averaged into episode_return, as the trainer's default
DETECTORS = ("self-deviation", "grad-norm z-score")
"""The default detectors: not the loss ones, since an RL loss tracks its value targets, which
grow as the policy improves (PPO's loss spikes on CartPole as returns rise, with no harm done)."""


def channels_of(model: Any) -> tuple[str, ...]:
    """The telemetry channels the callback records for ``model`` (an SB3 algorithm)."""
    return tuple(c.name for c in loss_channels_of(type(model)) + COMMON_CHANNELS)


class _SB3Run:
    """The live run as the actor sees it."""

    def __init__(self, model: Any, schedule: ScaledSchedule, grads: GradMonitor) -> None:
        self.model, self.schedule, self.grads = model, schedule, grads
        self.recipe_clip = math.inf
        self.clip = math.inf

    def set_knob(self, name: str, value: float) -> None:
        if name == "lr_backoff":
            self.schedule.factor = float(value)
        else:
            self.clip = float(value)
        self.grads.max_norm = min(self.recipe_clip, self.clip)

    def snapshot(self) -> Any:
        return clone_tree((self.model.policy.state_dict(),
                           [o.state_dict() for o in optimizers(self.model)]))  # fmt: skip

    def restore(self, snapshot: Any) -> None:
        weights, states = clone_tree(snapshot)
        self.model.policy.load_state_dict(weights)
        for optimizer, state in zip(optimizers(self.model), states):
            optimizer.load_state_dict(state)


class SB3MonitorCallback(BaseCallback):
    """A stable-baselines3 callback that feeds a :class:`StabilityMonitor` every update.

    Args:
        monitor: The monitor; default ``StabilityMonitor(channels_of(model),
            detectors=DETECTORS)`` (live calibration on the first 64 updates) built when
            ``learn`` starts.
        policy: Acting is off unless given (see :mod:`trainenv.monitor.actions`).
        log_dir: Folder of the Parquet event table; ``run_id`` names the run in it.
        keep_rows: Keep every update's row in :attr:`rows` (for calibration runs).
        actor_kwargs: ``action_spec``, ``duration``, ``checkpoint_every`` of the actor.
    """

    channels_of = staticmethod(channels_of)
    DETECTORS = DETECTORS

    def __init__(
        self,
        monitor: StabilityMonitor | None = None,
        policy: Policy | None = None,
        log_dir: str | Path | None = None,
        run_id: str = "run",
        keep_rows: bool = False,
        **actor_kwargs: Any,
    ) -> None:
        super().__init__()
        self._settings = (monitor, policy, log_dir, run_id, actor_kwargs)
        self.rows: list[dict[str, float]] | None = [] if keep_rows else None
        self.watch: Watch | None = None

    def _init_callback(self) -> None:
        model = self.model
        monitor, policy, log_dir, run_id, actor_kwargs = self._settings
        channels = channels_of(model)
        monitor = monitor or StabilityMonitor(channels, detectors=DETECTORS)
        missing = [c for c in monitor.channels if c not in channels]
        if missing:
            raise ValueError(f"monitor: channels {missing} are not recorded here; use {channels}")
        self.watch = Watch(monitor, policy, log_dir, run_id, **actor_kwargs)
        model.lr_schedule = ScaledSchedule(model.lr_schedule)  # its own, over any other
        grads = GradMonitor()
        self._run = _SB3Run(model, model.lr_schedule, grads)
        max_grad_norm = getattr(model, "max_grad_norm", None)
        if max_grad_norm is not None:
            self._run.recipe_clip = float(max_grad_norm)
            model.max_grad_norm = math.inf  # type: ignore[attr-defined]  # clipped in the hook
        self._run.set_knob("grad_clip", math.inf)
        grads.install(optimizers(model))
        self._channels = channels
        self._n_updates = model._n_updates
        self._weights = WeightChange(trained_weights(model))

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self._after_training()

    def _on_training_end(self) -> None:
        self._after_training()
        if self.watch is not None:
            self.watch.flush()

    def _after_training(self) -> None:
        """Record the update that trained since the last call, if one did."""
        if self.model._n_updates == self._n_updates:
            return
        self._n_updates = self.model._n_updates
        row = self._row()
        if self.rows is not None:
            self.rows.append(row)
        assert self.watch is not None
        _, actions, logs = self.watch.after_update(row, self._run)
        if any(action.name == "rollback" for action in actions):
            self._weights.reset()
        for key, value in logs.items():
            self.logger.record(key, value)

    def _row(self) -> dict[str, float]:
        model, logged = self.model, self.model.logger.name_to_value
        row = {name: float(logged.get(f"train/{name}", math.nan)) for name in self._channels}
        grads = self._run.grads
        row["grad_norm"] = float(np.mean(grads.norms)) if grads.norms else 0.0
        grads.norms.clear()
        change, weight_norm = self._weights.measure()
        row["weight_norm"] = float(weight_norm)
        row["update_ratio"] = float(change) / max(row["weight_norm"], 1e-12)
        episodes = list(model.ep_info_buffer or ())[-RETURN_EPISODES:]
        row["episode_return"] = float(np.mean([e["r"] for e in episodes])) if episodes else 0.0
        last = self._run.schedule.last
        row["lr"] = float(last) if last is not None else math.nan
        return row
