"""``TrainEnv``: one training run as a Gymnasium environment."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from trainenv.core.actions import Magnitudes
from trainenv.core.collapse import CollapseRule
from trainenv.core.interventions import Intervention
from trainenv.core.metastate import MetaStateEncoder
from trainenv.core.reward import RewardSpec
from trainenv.episode import (
    OBS_BOUND,
    ActionMode,
    Episode,
    EpisodeSettings,
    ObservationMode,
    StepResult,
)
from trainenv.trainers.base import Trainer

__all__ = ["OBS_BOUND", "ActionMode", "ObservationMode", "StepResult", "TrainEnv"]


class TrainEnv(gym.Env[np.ndarray, Any]):
    """A training run as an environment: ``step`` applies an intervention, then ``k`` updates.

    Observation (``observation="metastate"``, default), ``float32`` of shape ``(d + 1,)`` in
    ``[-10, 10]``: the ``d`` meta-state latents of the latest telemetry window (see
    :class:`~trainenv.core.metastate.MetaStateEncoder`), then training progress
    ``step / max_steps`` in ``[0, 1]``. With ``deviation_in_obs=True``, shape ``(d + 3,)``: the
    two deviation scores below (squashed into ``[0, 10)``) come before the progress. With
    ``observation="telemetry"``: the latest telemetry row in squashed symlog units, shape
    ``(C + 1,)``, no fitting needed.

    Action: ``action_mode="discrete"`` (default), a menu of no-op plus each intervention at
    ``levels`` magnitudes; ``"continuous"``, a ``Box(-1, 1)`` of per-intervention magnitudes.
    See :mod:`trainenv.core.actions`.

    Reward: :class:`~trainenv.core.reward.RewardSpec`, on performance normalised by the
    trainer's ``performance_range``. ``terminated`` means the run collapsed
    (:class:`~trainenv.core.collapse.CollapseRule`); ``truncated`` that ``max_steps`` steps
    were taken.

    ``info`` holds ``performance`` (raw), ``p`` (normalised; 0 when the performance is not
    finite), ``best_p``, ``knobs`` (in
    force after the step), ``active`` (knob interventions and the steps they have left),
    ``applied``, ``cost``, ``telemetry`` (latest row by channel), ``updates``,
    ``collapse`` (``None``, ``"non-finite"`` or ``"performance"``), and two meta-state
    deviation scores (0 before the first step; ``None`` without an encoder): ``deviation``,
    the Mahalanobis distance of the latent from the encoder's reference band at the same number
    of updates (:class:`~trainenv.core.band.ReferenceBand`; ``None`` if it has none), and
    ``self_deviation``, its distance from the run's own recent latents, which needs no
    reference runs (:class:`~trainenv.core.deviation.SelfDeviation`).

    Interventions can also be applied by name: ``intervene({"lr_shock": 100.0})`` is the
    step whose action applies them (``step(action)`` decodes the action, then intervenes).

    Args:
        trainer: The run.
        k: Updates per step.
        max_steps: Steps per episode (the budget).
        action_mode: ``"discrete"`` or ``"continuous"``.
        observation: ``"metastate"`` or ``"telemetry"``.
        interventions: Registry names on offer; default: all the trainer supports.
        levels: Magnitudes per intervention on the discrete menu.
        encoder: A fitted :class:`MetaStateEncoder` or a path to one (metastate only).
        collapse: The collapse rule, or its fields as a mapping (validated; JSON/YAML configs).
        reward: The reward spec, or its fields as a mapping (validated).
        checkpoint_every: With ``rollback`` on offer, the env keeps the run's last good fork,
            refreshed every this many steps while the run is healthy.
        deviation_in_obs: Append the deviation scores to the observation (needs an encoder
            with a reference band).
    """

    metadata: dict[str, Any] = {"render_modes": []}
    observation_space: spaces.Box

    def __init__(
        self,
        trainer: Trainer,
        *,
        k: int = 1,
        max_steps: int = 100,
        action_mode: ActionMode = "discrete",
        observation: ObservationMode = "metastate",
        interventions: Sequence[str] | None = None,
        levels: int = 3,
        encoder: MetaStateEncoder | str | Path | None = None,
        collapse: CollapseRule | Mapping[str, Any] | None = None,
        reward: RewardSpec | Mapping[str, Any] | None = None,
        checkpoint_every: int = 10,
        deviation_in_obs: bool = False,
    ) -> None:
        self.settings = EpisodeSettings.build(
            trainer, k=k, max_steps=max_steps, action_mode=action_mode, observation=observation,
            interventions=interventions, levels=levels, encoder=encoder, collapse=collapse,
            reward=reward, checkpoint_every=checkpoint_every, deviation_in_obs=deviation_in_obs,
        )  # fmt: skip
        self.trainer = trainer
        settings = self.settings
        self.k, self.max_steps = settings.k, settings.max_steps
        self.checkpoint_every = settings.checkpoint_every
        self.collapse_rule, self.reward_spec = settings.collapse_rule, settings.reward_spec
        self.action_spec, self.action_space = settings.action_spec, settings.action_spec.space
        self.observation_mode, self.encoder = settings.observation_mode, settings.encoder
        self.deviation_in_obs = settings.deviation_in_obs
        self.observation_space = settings.observation_space
        self._episode = Episode(settings, trainer)

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None and (
            isinstance(seed, (bool, np.bool_))
            or not isinstance(seed, (int, np.integer))
            or seed < 0
        ):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        previous = (self._np_random, self._np_random_seed)
        super().reset(seed=None if seed is None else int(seed))
        run_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        try:
            self.trainer.reset(run_seed)
        except BaseException:
            # A reset that fails leaves the env as it was (the trainer validates before it acts).
            self._np_random, self._np_random_seed = previous
            raise
        return self._episode.start()

    def step(self, action: Any) -> StepResult:
        """Decode ``action`` (``ValueError`` before the run is touched), then :meth:`intervene`."""
        self._episode.check_running()
        return self._advance(self.action_spec.decode(action))

    def intervene(self, interventions: Mapping[str, float]) -> StepResult:
        """Apply interventions by name, then advance ``k`` updates and observe: one step.

        Args:
            interventions: ``{name: magnitude}`` of interventions on offer
                (:attr:`interventions`), each magnitude within its registered range;
                ``{}`` is the no-op. Validated before the run is touched.

        Returns:
            ``(observation, reward, terminated, truncated, info)``, as :meth:`step`.
        """
        self._episode.check_running()
        return self._advance(self.settings.validated(interventions))

    def _advance(self, applied: Magnitudes) -> StepResult:
        cost = self._episode.begin_step(applied)
        return self._episode.end_step(self.trainer.advance(self.k), applied, cost)

    @property
    def telemetry_window(self) -> np.ndarray:
        """The telemetry rows the meta-state encodes now (the last ``encoder.window`` updates,
        fewer early on; the last update's row without an encoder), oldest first, shape
        ``(W', C)`` in the order of ``trainer.channels``; a copy."""
        return self._episode.window

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions on offer, in action-spec order."""
        return self.action_spec.interventions

    # -- forks ----------------------------------------------------------------------------------
    def fork(self) -> TrainEnv:
        """An independent environment continuing from exactly this one's state.

        The fork's run (weights, optimizer, data position, inner environment, every RNG) and
        the env's own state (active interventions, collapse and reward memory) are copies;
        continued with the same actions, the fork reproduces this env's continuation.
        """
        # Share what is never mutated: the settings (encoder, action spec...), the trainer's
        # data, and the rollback checkpoint (restoring copies out of a snapshot, never into it).
        shared = [self.settings, self.encoder, self.action_spec,
                  getattr(self._episode, "_checkpoint", None)]  # fmt: skip
        memo = {id(obj): obj for obj in [*shared, *self.trainer._shared()]}
        return copy.deepcopy(self, memo)
