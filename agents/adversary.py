"""A hidden adversary: the run is hit by a random schedule of perturbations; the agent stabilizes.

A :class:`ScheduleDistribution` declares which perturbations may strike, how hard, how many
times and when. Each episode :class:`AdversaryWrapper` draws a run seed and a schedule seed from
its :class:`SeedSplit`, samples the schedule (random onsets, dimensions and magnitudes) and
applies its shocks in the same step as the agent's stabilizers: both go to the inner
:class:`~trainenv.TrainEnv` together through ``intervene`` (as
:class:`~trainenv.multiagent.PerturbStabilizeEnv` does). The agent acts on stabilizers only and
observes what the run's telemetry shows; the schedule itself is never in the observation.

Training and evaluation draw seeds from disjoint ranges (:data:`TRAIN_SPLIT`,
:data:`HELDOUT_SPLIT`), so evaluation runs and schedules are never seen in training::

    env = make_adversarial_env("trainenv/Digits-MLP-v0", DIGITS_DISTRIBUTION)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.encoding import unwrap
from agents.observation import progress_observation, progress_space
from trainenv import (
    ActionSpec,
    ContinuousMagnitudes,
    Dimension,
    DiscreteMenu,
    Intervention,
    Role,
    get_intervention,
    get_perturbation,
)

AgentActions = Literal["discrete", "continuous", "compound"]
BACKOFF_AND_ROLLBACK = {"lr_backoff": 0.01, "rollback": 1.0}
"""The compound stabilizer of the ``"compound"`` menu: the learning rate backed off to 1 % and
the run rolled back to its last good fork, in one step (the joint reaction that saves a run
from a learning-rate shock; either alone left about half the shocked runs collapsed, as
:class:`~agents.rules.BackoffAndRollbackOnAlarm` notes)."""
_DIMENSION_ORDER = tuple(Dimension)


# -- schedules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shock:
    """One perturbation of a schedule: ``name`` at ``magnitude``, issued on step ``step``
    (0-based: the action of the episode's ``step + 1``-th ``env.step``)."""

    step: int
    name: str
    magnitude: float


@dataclass(frozen=True)
class AdversarialSchedule:
    """The shocks of one episode, sorted by step, drawn from a distribution with ``seed``."""

    seed: int
    shocks: tuple[Shock, ...]

    def at(self, step: int) -> dict[str, float]:
        """``{perturbation: magnitude}`` to issue on ``step`` (empty on most steps)."""
        return {s.name: s.magnitude for s in self.shocks if s.step == step}

    def describe(self) -> str:
        """``"12:lr_shock=350; 30:label_noise=0.7"`` (``"none"`` if empty)."""
        return "; ".join(f"{s.step}:{s.name}={s.magnitude:.4g}" for s in self.shocks) or "none"


class PerturbationRange(BaseModel):
    """A perturbation the adversary may use, with magnitudes drawn uniformly in position
    (geometrically for log-scale interventions) between ``low`` and ``high``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    low: float
    high: float

    @field_validator("name")
    @classmethod
    def _perturbation(cls, name: str) -> str:
        return get_perturbation(name).name

    @model_validator(mode="after")
    def _in_range(self) -> PerturbationRange:
        intervention = self.intervention
        intervention.validate_magnitude(self.low)
        intervention.validate_magnitude(self.high)
        if self.low > self.high:
            raise ValueError(f"{self.name}: low must be <= high, got {self.low} > {self.high}")
        return self

    @property
    def intervention(self) -> Intervention:
        return get_intervention(self.name)

    def draw(self, rng: np.random.Generator) -> float:
        """A magnitude in ``[low, high]``, uniform in the intervention's position scale."""
        i = self.intervention
        a, b = i.position(self.low), i.position(self.high)
        return i.magnitude(a + (b - a) * float(rng.random()))


class ScheduleDistribution(BaseModel):
    """The declared distribution of adversarial schedules.

    An episode's schedule: ``n`` shocks, ``n`` uniform in ``[shocks[0], shocks[1]]``; onsets
    uniform over the steps ``[onsets[0], onsets[1]]`` subject to at least ``min_gap`` steps
    between consecutive onsets; for each shock, a dimension uniform among the dimensions of
    ``perturbations``, then a perturbation uniform within that dimension, then its magnitude
    (:meth:`PerturbationRange.draw`).

    Attributes:
        perturbations: The perturbations on offer and their magnitude ranges.
        shocks: ``(min, max)`` shocks per episode, ``0 <= min <= max``.
        onsets: ``(first, last)`` step an onset may fall on, ``0 <= first <= last``.
        min_gap: Steps between consecutive onsets, ``>= 1`` (knob perturbations last their
            registered duration, 5 steps for most, so 5 keeps shocks apart).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    perturbations: tuple[PerturbationRange, ...] = Field(min_length=1)
    shocks: tuple[int, int] = (1, 3)
    onsets: tuple[int, int] = (5, 40)
    min_gap: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleDistribution:
        names = [p.name for p in self.perturbations]
        if len(set(names)) != len(names):
            raise ValueError(f"perturbations: each may appear once, got {names}")
        (lo, hi), (first, last) = self.shocks, self.onsets
        if not 0 <= lo <= hi:
            raise ValueError(f"shocks must be (min, max) with 0 <= min <= max, got {self.shocks}")
        if not 0 <= first <= last:
            raise ValueError(
                f"onsets must be (first, last) with 0 <= first <= last, got {self.onsets}"
            )
        if hi and (hi - 1) * self.min_gap > last - first:
            raise ValueError(
                f"{hi} shocks {self.min_gap} steps apart do not fit in onsets {self.onsets}: "
                f"need shocks[1] <= {(last - first) // self.min_gap + 1}"
            )
        return self

    @classmethod
    def for_env(cls, env: Any, shocks: tuple[int, int] = (1, 3)) -> ScheduleDistribution:
        """A default for ``env``: every perturbation it offers, over the upper half
        of its registered range; onsets between 20 % and 80 % of the episode, 5 steps apart
        (fewer than ``shocks[1]`` shocks per episode where a short episode has no room)."""
        inner = unwrap(env)
        ranges = [
            PerturbationRange(name=i.name, low=i.magnitude(0.5), high=i.high)
            for i in inner.interventions
            if i.role is Role.PERTURBATION
        ]
        first, last = inner.max_steps // 5, (4 * inner.max_steps) // 5
        most = min(shocks[1], (last - first) // 5 + 1)
        return cls(
            perturbations=tuple(ranges), shocks=(min(shocks[0], most), most),
            onsets=(first, last), min_gap=5,
        )  # fmt: skip

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.perturbations)

    def sample(self, seed: int) -> AdversarialSchedule:
        """The schedule drawn with ``seed`` (the same seed gives the same schedule)."""
        rng = np.random.default_rng(seed)
        n = int(rng.integers(self.shocks[0], self.shocks[1] + 1))
        dimensions = {p.intervention.dimension for p in self.perturbations}
        groups = [
            [p for p in self.perturbations if p.intervention.dimension is d]
            for d in sorted(dimensions, key=_DIMENSION_ORDER.index)
        ]
        shocks = []
        for step in self._onsets(rng, n):
            group = groups[int(rng.integers(len(groups)))]
            chosen = group[int(rng.integers(len(group)))]
            shocks.append(Shock(step, chosen.name, chosen.draw(rng)))
        return AdversarialSchedule(int(seed), tuple(shocks))

    def _onsets(self, rng: np.random.Generator, n: int) -> list[int]:
        # n sorted points spaced >= min_gap: draw n distinct slots from a range shortened by
        # the gaps, then spread them out again (uniform over all valid spaced placements).
        first, last = self.onsets
        slack = (last - first) - (n - 1) * self.min_gap
        slots = np.sort(rng.choice(slack + n, size=n, replace=False))
        return [first + int(s) - i + i * self.min_gap for i, s in enumerate(slots)]


# -- seeds -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSplit:
    """The run seeds and schedule seeds an environment may draw from."""

    name: str
    run: range
    schedule: range

    def isdisjoint(self, other: SeedSplit) -> bool:
        """No run seed and no schedule seed in common with ``other``."""
        return _disjoint(self.run, other.run) and _disjoint(self.schedule, other.schedule)

    def check(self, field: str, seed: int) -> int:
        seeds = getattr(self, field)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed not in seeds:
            raise ValueError(
                f"{field}_seed must be an integer in [{seeds.start}, {seeds.stop}) "
                f"(the {self.name} split), got {seed!r}"
            )
        return int(seed)


def _disjoint(a: range, b: range) -> bool:
    return a.stop <= b.start or b.stop <= a.start


TRAIN_SPLIT = SeedSplit("train", run=range(0, 1_000_000), schedule=range(0, 1_000_000))
HELDOUT_SPLIT = SeedSplit(
    "held-out", run=range(1_000_000, 2_000_000), schedule=range(1_000_000, 2_000_000)
)
assert TRAIN_SPLIT.isdisjoint(HELDOUT_SPLIT)


# -- the wrapper -------------------------------------------------------------------------------
class AdversaryWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A trainenv environment under a hidden adversarial schedule; the agent stabilizes.

    Observation: the inner env's, unchanged (the schedule is not in it). Action: the agent's
    stabilizers only, as a discrete menu (``agent_actions="discrete"``: 0 the no-op, then each
    stabilizer at ``levels`` magnitudes), the same menu with the compound "back off and roll
    back" last (``"compound"``, :class:`CompoundMenu`) or a ``Box(-1, 1)`` with one component
    per stabilizer (``"continuous"``); see :mod:`trainenv.core.actions`. Reward, termination
    and ``info`` are the inner env's; ``info["applied"]`` lists the shocks and stabilizers
    applied that step. ``reset`` adds ``run_seed`` and ``schedule_seed`` to ``info``. With
    ``progress=True`` the observation also holds ``p`` and ``best_p``
    (:func:`progress_observation`).

    ``reset(seed=s)`` draws the run seed and the schedule seed from the ``split`` with a
    generator seeded by ``s`` (later seedless resets continue it); ``options={"run_seed": r,
    "schedule_seed": q}`` fixes either, within the split.

    Args:
        env: A trainenv environment with ``action_mode="continuous"`` offering the
            distribution's perturbations and the agent's stabilizers
            (:func:`make_adversarial_env` builds one).
        distribution: The adversary's schedules.
        agent_actions: ``"discrete"``, ``"compound"`` or ``"continuous"``.
        stabilizers: The agent's stabilizers (default: every stabilizer ``env`` offers).
        levels: Magnitudes per stabilizer on the discrete menu.
        split: The seeds this environment draws from.
        progress: Append ``p`` and ``best_p`` to the observation.
    """

    def __init__(
        self,
        env: gym.Env,
        distribution: ScheduleDistribution,
        *,
        agent_actions: AgentActions = "discrete",
        stabilizers: Sequence[str] | None = None,
        levels: int = 3,
        split: SeedSplit = TRAIN_SPLIT,
        progress: bool = False,
    ) -> None:
        inner = unwrap(env)
        offered = {i.name: i for i in inner.interventions}
        _check_fits(distribution, offered, inner.max_steps)
        self.agent_spec = _agent_spec(agent_actions, _stabilizers(offered, stabilizers), levels)
        # Recorded so that ``env.spec.make()`` rebuilds the wrapped env.
        gym.utils.RecordConstructorArgs.__init__(
            self, distribution=distribution, agent_actions=agent_actions,
            stabilizers=stabilizers, levels=levels, split=split, progress=progress,
        )  # fmt: skip
        gym.Wrapper.__init__(self, env)
        self.distribution, self.split, self.progress = distribution, split, progress
        self._inner = inner
        self.action_space = self.agent_spec.space
        if progress:
            self.observation_space = progress_space(env.observation_space)
        self.schedule: AdversarialSchedule | None = None
        self._rng: np.random.Generator | None = None
        self._step_index = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = dict(options or {})
        unknown = sorted(set(options) - {"run_seed", "schedule_seed"})
        if unknown:
            raise ValueError(f"options: unknown keys {unknown}; allowed: run_seed, schedule_seed")
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        # Both seeds are drawn every reset, so fixing one does not shift the other's stream.
        drawn = {
            field: _draw(self._rng, getattr(self.split, field)) for field in ("run", "schedule")
        }
        run_seed = self.split.check("run", options.get("run_seed", drawn["run"]))
        schedule_seed = self.split.check(
            "schedule", options.get("schedule_seed", drawn["schedule"])
        )
        self.schedule = self.distribution.sample(schedule_seed)
        self._step_index = 0
        obs, info = self.env.reset(seed=run_seed)
        return self.observe(obs, info), {
            **info,
            "run_seed": run_seed,
            "schedule_seed": schedule_seed,
        }

    def observe(self, obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
        """The agent's observation of the inner env's ``obs`` and ``info``: ``obs`` itself, or
        with ``progress`` :func:`progress_observation` (also for population members)."""
        return progress_observation(obs, info) if self.progress else obs

    def with_distribution(self, distribution: ScheduleDistribution) -> AdversaryWrapper:
        """The same agent, seeds and inner env (shared, not copied) under another adversary."""
        return AdversaryWrapper(self.env, **{**self._saved_kwargs, "distribution": distribution})

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step with the agent's action (an element of ``action_space``)."""
        return self._step(self.agent_spec.decode(action))

    def step_inner(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step with an action of the inner env's space, as :func:`agents.encode` and the
        controllers of :mod:`agents.rules` build it; it may apply the agent's stabilizers only."""
        return self._step(self.decode_inner(action))

    def decode_inner(self, action: Any) -> dict[str, float]:
        """``{stabilizer: magnitude}`` that an action of the inner env's space applies;
        ``ValueError`` if it applies anything but the agent's stabilizers. (The population
        evaluation of :mod:`agents.evaluate` decodes its members' actions with this.)"""
        return self._allowed(self._inner.action_spec.decode(action))

    def _allowed(self, stabilizers: Mapping[str, float]) -> dict[str, float]:
        allowed = {i.name for i in self.agent_spec.interventions}
        refused = sorted(set(stabilizers) - allowed)
        if refused:
            raise ValueError(
                f"action applies {refused}; the agent may apply only {sorted(allowed)}"
            )
        return dict(stabilizers)

    def _step(
        self, stabilizers: Mapping[str, float]
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.schedule is None:
            raise RuntimeError("call reset() before step()")
        stabilizers = self._allowed(stabilizers)
        shocks = self.schedule.at(self._step_index)
        self._step_index += 1
        obs, reward, terminated, truncated, info = self._inner.intervene({**stabilizers, **shocks})
        return self.observe(obs, info), reward, terminated, truncated, info


def _check_fits(
    distribution: ScheduleDistribution, offered: Mapping[str, Intervention], max_steps: int
) -> None:
    """``ValueError`` unless the env offers the distribution's perturbations and its onsets
    fall within an episode of ``max_steps`` steps."""
    missing = [n for n in distribution.names if n not in offered]
    if missing:
        raise ValueError(
            f"distribution: perturbations {missing} are not offered by env: {sorted(offered)}"
        )
    if distribution.onsets[1] >= max_steps:
        raise ValueError(
            f"distribution: onsets {distribution.onsets} must end before max_steps ({max_steps})"
        )


def _stabilizers(
    offered: Mapping[str, Intervention], names: Sequence[str] | None
) -> list[Intervention]:
    available = [i for i in offered.values() if i.role is Role.STABILIZER]
    if names is None:
        if not available:
            raise ValueError("env: offers no stabilizers for the agent")
        return available
    unknown = sorted(set(names) - {i.name for i in available})
    if unknown or not names:
        raise ValueError(
            f"stabilizers: {unknown or 'none given'}; available: {[i.name for i in available]}"
        )
    return [i for i in available if i.name in names]


class CompoundMenu(DiscreteMenu):
    """The discrete menu (0 the no-op, then each stabilizer at each level) with one more,
    last entry: :data:`BACKOFF_AND_ROLLBACK`, two stabilizers in one action (a plain menu
    applies one a step, and a shocked run collapses a few steps after the shock).

    Needs ``lr_backoff`` and ``rollback`` among the stabilizers.
    """

    entries: tuple[dict[str, float], ...]

    def __init__(self, interventions: Sequence[Intervention], levels: int = 3) -> None:
        super().__init__(interventions, levels)
        names = {i.name for i in self.interventions}
        missing = sorted(set(BACKOFF_AND_ROLLBACK) - names)
        if missing:
            raise ValueError(
                f"stabilizers: the compound menu needs {missing} too, got {sorted(names)}"
            )
        # The plain menu's entries keep their positions; the compound one is not a level.
        self._plain = DiscreteMenu(interventions, levels)
        self.entries = (*self.entries, dict(BACKOFF_AND_ROLLBACK))
        self.space = gym.spaces.Discrete(len(self.entries))

    def index(self, name: str, magnitude: float | None = None) -> int:
        """The plain menu's action applying ``name`` at ``magnitude`` (never the compound)."""
        return self._plain.index(name, magnitude)

    def encode(self, magnitudes: Mapping[str, float]) -> int:
        """As the plain menu's, and the compound entry for exactly :data:`BACKOFF_AND_ROLLBACK`."""
        if dict(magnitudes) == BACKOFF_AND_ROLLBACK:
            return len(self.entries) - 1
        return super().encode(magnitudes)


def _agent_spec(mode: str, stabilizers: list[Intervention], levels: int) -> ActionSpec:
    if mode == "discrete":
        return DiscreteMenu(stabilizers, levels)
    if mode == "continuous":
        return ContinuousMagnitudes(stabilizers)
    if mode == "compound":
        return CompoundMenu(stabilizers, levels)
    raise ValueError(f"agent_actions must be 'discrete', 'continuous' or 'compound', got {mode!r}")


def _draw(rng: np.random.Generator, seeds: range) -> int:
    return seeds.start + int(rng.integers(len(seeds)))


def make_adversarial_env(
    env_id: str,
    distribution: ScheduleDistribution | None = None,
    *,
    agent_actions: AgentActions = "discrete",
    stabilizers: Sequence[str] | None = None,
    levels: int = 3,
    split: SeedSplit = TRAIN_SPLIT,
    progress: bool = False,
    **env_kwargs: Any,
) -> AdversaryWrapper:
    """Build ``env_id`` (with ``env_kwargs``) under an adversary.

    The inner env (built once) offers every intervention the run supports, with continuous
    actions so that :meth:`AdversaryWrapper.step_inner` can combine stabilizers (default
    distribution: :meth:`ScheduleDistribution.for_env`; default stabilizers: all the run
    supports). See :class:`AdversaryWrapper` for the other arguments.
    """
    reserved = sorted(set(env_kwargs) & {"action_mode", "interventions"})
    if reserved:
        raise ValueError(f"env_kwargs: {reserved} are set by the adversary wrapper")
    env = gym.make(env_id, action_mode="continuous", **env_kwargs)
    if distribution is None:
        distribution = ScheduleDistribution.for_env(env)
    return AdversaryWrapper(
        env,
        distribution,
        agent_actions=agent_actions,
        stabilizers=stabilizers,
        levels=levels,
        split=split,
        progress=progress,
    )
