"""One episode of one run: the per-run logic shared by ``TrainEnv`` and population members.

:class:`EpisodeSettings` holds what every episode of an environment shares (validated once:
budget, action spec, encoder, collapse rule, reward, observation space); :class:`Episode` holds
one run's episode state (knob schedule, rollback checkpoint, telemetry window, meta-state and
deviation scores, normalised performance, collapse memory) and turns each step into the
observation, reward, termination and info. It acts on anything with the single-run trainer's
knob, event, snapshot and evaluate interface (:class:`EpisodeRun`): a :class:`Trainer`, or one
member of a population through :class:`~trainenv.vector.MemberView`. Advancing the run is the
caller's: :class:`~trainenv.env.TrainEnv` advances its trainer, the population vector env
advances all members in one batched call.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from gymnasium import spaces

from trainenv.core import interventions as registry
from trainenv.core.actions import ActionSpec, ContinuousMagnitudes, DiscreteMenu, Magnitudes
from trainenv.core.collapse import CollapseRule, CollapseState
from trainenv.core.deviation import SelfDeviation
from trainenv.core.interventions import ROLLBACK_EVENT, Intervention
from trainenv.core.knobs import KnobSpec
from trainenv.core.metastate import MetaStateEncoder, squash, symlog
from trainenv.core.reward import RewardSpec
from trainenv.core.telemetry import ChannelSpec, Telemetry
from trainenv.trainers.base import check_positive_int

ActionMode = Literal["discrete", "continuous"]
ObservationMode = Literal["metastate", "telemetry"]
OBS_BOUND = 10.0
StepResult = tuple[np.ndarray, float, bool, bool, dict[str, Any]]


class RunDeclaration(Protocol):
    """What the settings need of a run: its telemetry channels and intervention targets
    (a trainer, or a population: its members share the declaration)."""

    @property
    def channels(self) -> tuple[ChannelSpec, ...]: ...
    @property
    def targets(self) -> tuple[str, ...]: ...


class EpisodeRun(RunDeclaration, Protocol):
    """What an episode needs of its run: the single-run trainer's interface, less ``advance``."""

    @property
    def knob_specs(self) -> tuple[KnobSpec, ...]: ...
    @property
    def performance_range(self) -> tuple[float, float]: ...
    @property
    def updates(self) -> int: ...
    @property
    def knobs(self) -> Mapping[str, float]: ...
    def set_knob(self, name: str, value: float) -> None: ...
    def reset_knob(self, name: str) -> None: ...
    def apply_event(self, name: str, magnitude: float) -> None: ...
    def snapshot(self) -> Any: ...
    def restore(self, snapshot: Any) -> None: ...
    def evaluate(self) -> float: ...
    def info(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class EpisodeSettings:
    """What every episode of one environment shares; never mutated, so forks share it.

    Built by :meth:`build` from the environment's keywords (see
    :class:`~trainenv.env.TrainEnv` for their meaning).
    """

    k: int
    max_steps: int
    checkpoint_every: int
    collapse_rule: CollapseRule
    reward_spec: RewardSpec
    action_spec: ActionSpec
    observation_mode: ObservationMode
    encoder: MetaStateEncoder | None
    deviation_in_obs: bool
    observation_space: spaces.Box

    @classmethod
    def build(
        cls,
        run: RunDeclaration,
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
    ) -> EpisodeSettings:
        """Validate the environment's keywords against ``run``'s declaration (``ValueError``
        naming the field)."""
        for name, value in (("k", k), ("max_steps", max_steps), ("levels", levels),
                            ("checkpoint_every", checkpoint_every)):  # fmt: skip
            check_positive_int(name, value)
        collapse_rule = CollapseRule.model_validate(collapse or {})
        reward_spec = RewardSpec.model_validate(reward or {})
        action_spec = _action_spec(action_mode, _interventions(run, interventions), levels)
        fitted = _encoder(observation, encoder, run)
        if deviation_in_obs and (fitted is None or fitted.band_ is None):
            raise ValueError(
                "deviation_in_obs=True needs observation='metastate' and an encoder with a "
                "reference band (fitted by trainenv.calibrate with seeds >= 2)"
            )
        width = (fitted.n_components if fitted else len(run.channels)) + 1
        width += 2 * bool(deviation_in_obs)
        return cls(
            k=int(k),
            max_steps=int(max_steps),
            checkpoint_every=int(checkpoint_every),
            collapse_rule=collapse_rule,
            reward_spec=reward_spec,
            action_spec=action_spec,
            observation_mode=observation,
            encoder=fitted,
            deviation_in_obs=bool(deviation_in_obs),
            observation_space=spaces.Box(-OBS_BOUND, OBS_BOUND, (width,), np.float32),
        )

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions on offer, in action-spec order."""
        return self.action_spec.interventions

    @property
    def rollback(self) -> bool:
        """Whether rollback is on offer (episodes then keep a checkpoint of their run)."""
        return any(i.event == ROLLBACK_EVENT for i in self.interventions)

    def validated(self, interventions: Mapping[str, float]) -> Magnitudes:
        """``{name: magnitude}`` checked against the offer and each registered range."""
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


class Episode:
    """One run's episode: everything between ``reset`` and the end, except advancing the run.

    A step is :meth:`begin_step` (expire knob interventions, apply the new ones), the caller's
    ``advance(k)`` of the run, then :meth:`end_step` with its telemetry.

    Args:
        settings: The environment's shared settings.
        run: The run the episode acts on.

    Attributes:
        started: An episode is under way (``start`` called, not yet terminated or truncated).
        steps: Steps taken in this episode.
    """

    def __init__(self, settings: EpisodeSettings, run: EpisodeRun) -> None:
        self.settings, self.run = settings, run
        encoder = settings.encoder
        self._window = encoder.window if encoder else 1
        self._self_detector = SelfDeviation() if encoder else None
        self._rows = np.zeros((0, len(run.channels)))
        self.started = False
        self.steps = 0

    def start(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Begin the episode of a run that has just been reset; its first observation and info."""
        self.steps = 0
        self._rows = np.zeros((0, len(self.run.channels)))
        self._active: dict[str, tuple[str, float, int]] = {}  # knob -> (name, magnitude, left)
        self._p = self._normalise(self.run.evaluate())
        self._collapse_state = CollapseState(best=self._p)
        self._checkpoint = self.run.snapshot() if self.settings.rollback else None
        self._reset_metastate()
        self.started = True
        return self._observe(), self._info({}, 0.0, None)

    @property
    def window(self) -> np.ndarray:
        """The telemetry rows the meta-state encodes now, oldest first: shape ``(W', C)``,
        ``W'`` at most the encoder's window (1 without an encoder); a copy."""
        return self._rows.copy()

    def check_running(self) -> None:
        """``RuntimeError`` unless an episode is under way."""
        if not self.started:
            raise RuntimeError(
                "the episode has not started or has ended (terminated or truncated): call reset()"
            )

    def begin_step(self, applied: Magnitudes) -> float:
        """Expire finished knob interventions and apply ``applied`` (validated); their cost."""
        self.check_running()
        self._expire_knobs()
        cost = 0.0
        for name, magnitude in applied.items():
            intervention = self.settings.action_spec.intervention(name)
            cost += intervention.cost
            if intervention.knob is not None:
                self.run.set_knob(intervention.knob, magnitude)
                self._active[intervention.knob] = (name, magnitude, intervention.duration)
            elif intervention.event == ROLLBACK_EVENT:
                self._roll_back()
            else:
                self.run.apply_event(intervention.target, magnitude)
        return cost

    def end_step(self, telemetry: Telemetry, applied: Magnitudes, cost: float) -> StepResult:
        """Record the step's telemetry (the run has advanced) and observe: the step's
        ``(observation, reward, terminated, truncated, info)``."""
        settings = self.settings
        self._rows = np.concatenate([self._rows, telemetry.values])[-self._window :]
        self._update_metastate()
        p_prev, self._p = self._p, self._normalise(self.run.evaluate())
        self._collapse_state, reason = settings.collapse_rule.update(
            self._collapse_state, self._p, telemetry.diverged
        )
        self.steps += 1
        terminated = reason is not None
        truncated = not terminated and self.steps >= settings.max_steps
        if terminated or truncated:
            self.started = False
        elif settings.rollback and self.steps % settings.checkpoint_every == 0 and self._healthy():
            self._checkpoint = self.run.snapshot()
        reward = settings.reward_spec(p_prev, self._p, self._collapse_state.best, cost, terminated)
        info = self._info(applied, cost, reason)
        return self._observe(), float(reward), terminated, truncated, info

    def moved_to(self, run: EpisodeRun) -> Episode:
        """A copy of this episode's state acting on ``run`` (a fork of this episode's run)."""
        # Shared: the settings (never mutated) and the checkpoint (restore copies out of it).
        shared = [self.settings, getattr(self, "_checkpoint", None)]
        memo: dict[int, Any] = {id(obj): obj for obj in shared}
        memo[id(self.run)] = run
        return copy.deepcopy(self, memo)

    # -- internals ------------------------------------------------------------------------------
    def _expire_knobs(self) -> None:
        for knob, (name, magnitude, left) in list(self._active.items()):
            if left <= 1:
                del self._active[knob]
                self.run.reset_knob(knob)
            else:
                self._active[knob] = (name, magnitude, left - 1)

    def _roll_back(self) -> None:
        self.run.restore(self._checkpoint)
        # The episode's schedule of active interventions is the authority on knobs, not the
        # knobs recorded in the checkpoint.
        for spec in self.run.knob_specs:
            active = self._active.get(spec.name)
            self.run.set_knob(spec.name, active[1] if active else spec.default)

    def _healthy(self) -> bool:
        return self._p >= self.settings.collapse_rule.threshold(self._collapse_state.best)

    def _normalise(self, performance: float) -> float:
        if not math.isfinite(performance):
            return 0.0  # a diverged model has lost everything: metrics and curves stay finite
        floor, ceiling = self.run.performance_range
        return (performance - floor) / (ceiling - floor)

    def _reset_metastate(self) -> None:
        encoder = self.settings.encoder
        self._latent = np.zeros(encoder.n_components) if encoder else None
        # None, not NaN, when unavailable: NaN != NaN would make equal infos compare unequal.
        has_band = encoder is not None and encoder.band_ is not None
        self._deviation: float | None = 0.0 if has_band else None
        self._self_deviation_score: float | None = 0.0 if encoder else None
        if self._self_detector is not None:
            self._self_detector.reset()

    def _update_metastate(self) -> None:
        """The latent of the latest window and its two deviation scores (one small matmul)."""
        encoder = self.settings.encoder
        if encoder is None or self._self_detector is None:
            return
        self._latent = encoder.encode(self._rows)
        if encoder.band_ is not None:
            self._deviation = encoder.band_.distance(self._latent, self.run.updates)
        self._self_deviation_score = self._self_detector.update(self._latent)

    def _observe(self) -> np.ndarray:
        if self._latent is not None:  # meta-state observations
            body = self._latent
        elif len(self._rows):
            body = squash(symlog(self._rows[-1]), OBS_BOUND)
        else:  # telemetry before the first update
            body = np.zeros(len(self.run.channels))
        if self.settings.deviation_in_obs:
            scores = np.array([self._deviation, self._self_deviation_score])
            body = np.append(body, squash(scores, OBS_BOUND))
        return np.append(body, self.steps / self.settings.max_steps).astype(np.float32)

    def _info(self, applied: Magnitudes, cost: float, collapse: str | None) -> dict[str, Any]:
        channels = self.run.channels
        last = self._rows[-1] if len(self._rows) else np.full(len(channels), np.nan)
        return {
            "performance": self.run.evaluate(),
            "p": self._p,
            "best_p": self._collapse_state.best,
            "knobs": dict(self.run.knobs),
            "active": {name: left for name, _, left in self._active.values()},
            "applied": list(applied.items()),
            "cost": cost,
            "telemetry": {c.name: float(v) for c, v in zip(channels, last)},
            "updates": self.run.updates,
            "collapse": collapse,
            "deviation": self._deviation,
            "self_deviation": self._self_deviation_score,
            **self.run.info(),
        }


def _interventions(run: RunDeclaration, names: Sequence[str] | None) -> list[Intervention]:
    available = registry.supported((*run.targets, ROLLBACK_EVENT))
    if names is None:
        return list(available)
    chosen = [registry.get(n) for n in names]
    unsupported = [i.name for i in chosen if i not in available]
    if unsupported:
        raise ValueError(
            f"interventions {unsupported} are not supported by {type(run).__name__}; "
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
    mode: str, encoder: MetaStateEncoder | str | Path | None, run: RunDeclaration
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
    channels = tuple(c.name for c in run.channels)
    if encoder.channels != channels:
        raise ValueError(
            f"encoder was fitted on channels {encoder.channels}, trainer has {channels}"
        )
    return encoder
