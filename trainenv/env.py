"""``TrainEnv``: one training run as a Gymnasium environment."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from trainenv.core import interventions as registry
from trainenv.core.actions import ActionSpec, ContinuousMagnitudes, DiscreteMenu, Magnitudes
from trainenv.core.collapse import CollapseRule, CollapseState
from trainenv.core.deviation import SelfDeviation
from trainenv.core.interventions import ROLLBACK_EVENT, Intervention
from trainenv.core.metastate import MetaStateEncoder, squash, symlog
from trainenv.core.reward import RewardSpec
from trainenv.trainers.base import Trainer, check_positive_int

ActionMode = Literal["discrete", "continuous"]
ObservationMode = Literal["metastate", "telemetry"]
OBS_BOUND = 10.0
StepResult = tuple[np.ndarray, float, bool, bool, dict[str, Any]]


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
        for name, value in (("k", k), ("max_steps", max_steps), ("levels", levels),
                            ("checkpoint_every", checkpoint_every)):  # fmt: skip
            check_positive_int(name, value)
        self.trainer = trainer
        self.k, self.max_steps, self.checkpoint_every = int(k), int(max_steps), checkpoint_every
        self.collapse_rule = CollapseRule.model_validate(collapse or {})
        self.reward_spec = RewardSpec.model_validate(reward or {})
        self.action_spec = _action_spec(action_mode, _interventions(trainer, interventions), levels)
        self.action_space = self.action_spec.space
        self.observation_mode = observation
        self.encoder = _encoder(observation, encoder, trainer)
        if deviation_in_obs and (self.encoder is None or self.encoder.band_ is None):
            raise ValueError(
                "deviation_in_obs=True needs observation='metastate' and an encoder with a "
                "reference band (fitted by trainenv.calibrate with seeds >= 2)"
            )
        self.deviation_in_obs = bool(deviation_in_obs)
        width = (self.encoder.n_components if self.encoder else len(trainer.channels)) + 1
        width += 2 * self.deviation_in_obs
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (width,), np.float32)
        self._rollback = any(i.event == ROLLBACK_EVENT for i in self.interventions)
        self._window = self.encoder.window if self.encoder else 1
        self._self_detector = SelfDeviation() if self.encoder else None
        self._started = False

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
        self._steps = 0
        self._rows = np.zeros((0, len(self.trainer.channels)))
        self._active: dict[str, tuple[str, float, int]] = {}  # knob -> (name, magnitude, left)
        self._p = self._normalise(self.trainer.evaluate())
        self._collapse_state = CollapseState(best=self._p)
        self._checkpoint = self.trainer.snapshot() if self._rollback else None
        self._reset_metastate()
        self._started = True
        return self._observe(), self._info({}, 0.0, None)

    def step(self, action: Any) -> StepResult:
        """Decode ``action`` (``ValueError`` before the run is touched), then :meth:`intervene`."""
        self._check_running()
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
        self._check_running()
        return self._advance(self._validated(interventions))

    def _advance(self, applied: Magnitudes) -> StepResult:
        self._expire_knobs()
        cost = self._apply(applied)
        telemetry = self.trainer.advance(self.k)
        self._rows = np.concatenate([self._rows, telemetry.values])[-self._window :]
        self._update_metastate()
        p_prev, self._p = self._p, self._normalise(self.trainer.evaluate())
        self._collapse_state, reason = self.collapse_rule.update(
            self._collapse_state, self._p, telemetry.diverged
        )
        self._steps += 1
        terminated = reason is not None
        truncated = not terminated and self._steps >= self.max_steps
        if terminated or truncated:
            self._started = False
        elif self._rollback and self._steps % self.checkpoint_every == 0 and self._healthy():
            self._checkpoint = self.trainer.snapshot()
        reward = self.reward_spec(p_prev, self._p, self._collapse_state.best, cost, terminated)
        return (
            self._observe(),
            float(reward),
            terminated,
            truncated,
            self._info(applied, cost, reason),
        )

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
        # Share what is never mutated: the encoder, the action spec, the trainer's data, and
        # the rollback checkpoint (restoring copies out of a snapshot, never into it).
        shared = [self.encoder, self.action_spec, getattr(self, "_checkpoint", None)]
        memo = {id(obj): obj for obj in [*shared, *self.trainer._shared()]}
        return copy.deepcopy(self, memo)

    # -- internals ------------------------------------------------------------------------------
    def _check_running(self) -> None:
        if not self._started:
            raise RuntimeError(
                "the episode has not started or has ended (terminated or truncated): call reset()"
            )

    def _validated(self, interventions: Mapping[str, float]) -> Magnitudes:
        if not isinstance(interventions, Mapping):
            raise ValueError(
                f"interventions must be a mapping of name to magnitude, got {interventions!r}"
            )
        validated: Magnitudes = {}
        for name, magnitude in interventions.items():
            intervention = self.action_spec.intervention(name)
            if isinstance(magnitude, (bool, np.bool_)) or not isinstance(
                magnitude, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"magnitude of {name!r} must be a number, got {magnitude!r}")
            validated[name] = intervention.validate_magnitude(magnitude)
        return validated

    def _apply(self, applied: Magnitudes) -> float:
        cost = 0.0
        for name, magnitude in applied.items():
            intervention = self.action_spec.intervention(name)
            cost += intervention.cost
            if intervention.knob is not None:
                self.trainer.set_knob(intervention.knob, magnitude)
                self._active[intervention.knob] = (name, magnitude, intervention.duration)
            elif intervention.event == ROLLBACK_EVENT:
                self._roll_back()
            else:
                self.trainer.apply_event(intervention.target, magnitude)
        return cost

    def _expire_knobs(self) -> None:
        for knob, (name, magnitude, left) in list(self._active.items()):
            if left <= 1:
                del self._active[knob]
                self.trainer.reset_knob(knob)
            else:
                self._active[knob] = (name, magnitude, left - 1)

    def _roll_back(self) -> None:
        self.trainer.restore(self._checkpoint)
        # The env's schedule of active interventions is the authority on knobs, not the
        # knobs recorded in the checkpoint.
        for spec in self.trainer.knob_specs:
            active = self._active.get(spec.name)
            self.trainer.set_knob(spec.name, active[1] if active else spec.default)

    def _healthy(self) -> bool:
        return self._p >= self.collapse_rule.threshold(self._collapse_state.best)

    def _normalise(self, performance: float) -> float:
        if not math.isfinite(performance):
            return 0.0  # a diverged model has lost everything: metrics and curves stay finite
        floor, ceiling = self.trainer.performance_range
        return (performance - floor) / (ceiling - floor)

    def _reset_metastate(self) -> None:
        self._latent = np.zeros(self.encoder.n_components) if self.encoder else None
        # None, not NaN, when unavailable: NaN != NaN would make equal infos compare unequal.
        has_band = self.encoder is not None and self.encoder.band_ is not None
        self._deviation: float | None = 0.0 if has_band else None
        self._self_deviation_score: float | None = 0.0 if self.encoder else None
        if self._self_detector is not None:
            self._self_detector.reset()

    def _update_metastate(self) -> None:
        """The latent of the latest window and its two deviation scores (one small matmul)."""
        if self.encoder is None or self._self_detector is None:
            return
        self._latent = self.encoder.encode(self._rows)
        if self.encoder.band_ is not None:
            self._deviation = self.encoder.band_.distance(self._latent, self.trainer.updates)
        self._self_deviation_score = self._self_detector.update(self._latent)

    def _observe(self) -> np.ndarray:
        if self._latent is not None:  # meta-state observations
            body = self._latent
        elif len(self._rows):
            body = squash(symlog(self._rows[-1]), OBS_BOUND)
        else:  # telemetry before the first update
            body = np.zeros(len(self.trainer.channels))
        if self.deviation_in_obs:
            scores = np.array([self._deviation, self._self_deviation_score])
            body = np.append(body, squash(scores, OBS_BOUND))
        return np.append(body, self._steps / self.max_steps).astype(np.float32)

    def _info(self, applied: Magnitudes, cost: float, collapse: str | None) -> dict[str, Any]:
        last = self._rows[-1] if len(self._rows) else np.full(len(self.trainer.channels), np.nan)
        return {
            "performance": self.trainer.evaluate(),
            "p": self._p,
            "best_p": self._collapse_state.best,
            "knobs": dict(self.trainer.knobs),
            "active": {name: left for name, _, left in self._active.values()},
            "applied": list(applied.items()),
            "cost": cost,
            "telemetry": {c.name: float(v) for c, v in zip(self.trainer.channels, last)},
            "updates": self.trainer.updates,
            "collapse": collapse,
            "deviation": self._deviation,
            "self_deviation": self._self_deviation_score,
            **self.trainer.info(),
        }


def _interventions(trainer: Trainer, names: Sequence[str] | None) -> list[Intervention]:
    available = registry.supported((*trainer.targets, ROLLBACK_EVENT))
    if names is None:
        return list(available)
    chosen = [registry.get(n) for n in names]
    unsupported = [i.name for i in chosen if i not in available]
    if unsupported:
        raise ValueError(
            f"interventions {unsupported} are not supported by {type(trainer).__name__}; "
            f"supported: {[i.name for i in available]}"
        )
    return chosen


def _action_spec(mode: str, interventions: list[Intervention], levels: int) -> ActionSpec:
    if mode == "discrete":
        return DiscreteMenu(interventions, levels)
    if mode == "continuous":
        return ContinuousMagnitudes(interventions)
    raise ValueError(f"action_mode must be 'discrete' or 'continuous', got {mode!r}")


def _encoder(
    mode: str, encoder: MetaStateEncoder | str | Path | None, trainer: Trainer
) -> MetaStateEncoder | None:
    if mode == "telemetry":
        return None
    if mode != "metastate":
        raise ValueError(f"observation must be 'metastate' or 'telemetry', got {mode!r}")
    if encoder is None:
        raise ValueError(
            "observation='metastate' needs a fitted encoder: pass encoder=trainenv.calibrate(...) "
            "or a path to one, or use observation='telemetry'"
        )
    if not isinstance(encoder, MetaStateEncoder):
        encoder = MetaStateEncoder.load(encoder)
    channels = tuple(c.name for c in trainer.channels)
    if encoder.channels != channels:
        raise ValueError(
            f"encoder was fitted on channels {encoder.channels}, trainer has {channels}"
        )
    return encoder
