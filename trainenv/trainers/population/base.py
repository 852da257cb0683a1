"""The population trainer protocol: N runs of one recipe (its members) advanced together.

A population owns its members' state stacked along a leading member dimension and advances all
of them in one batched computation. Each member is a run in its own right: it has its own seed,
generators, knobs, events, snapshot and divergence, and its trajectory does not depend on which
other members share the batch.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainenv.core.knobs import KnobSpec
from trainenv.core.rng import perturbation_generator
from trainenv.core.telemetry import ChannelSpec, Telemetry
from trainenv.trainers.base import Trainer, check_positive_int


@dataclass(frozen=True)
class PopulationTelemetry:
    """The telemetry of one ``PopulationTrainer.advance(k)`` call.

    Attributes:
        values: Array of shape ``(n_members, k, n_channels)``; member ``i``'s rows past
            ``n_updates[i]`` are NaN.
        n_updates: Shape ``(n_members,)``: updates each member ran (``k``, fewer for a member
            that diverged during the call, 0 for one that had diverged before it).
        diverged: Shape ``(n_members,)``: the member has diverged (during or before the call).
    """

    values: np.ndarray
    n_updates: np.ndarray
    diverged: np.ndarray

    def member(self, member: int) -> Telemetry:
        """Member ``member``'s telemetry as a single-run trainer would return it."""
        rows = self.values[member, : self.n_updates[member]]
        return Telemetry(rows, diverged=bool(self.diverged[member]))


@dataclass(frozen=True)
class MemberSnapshot:
    """The whole state of one member, immutable by contract (``restore`` copies out of it).

    Attributes:
        seed: The member's seed.
        updates: Updates the member has run.
        diverged: Whether the member had diverged.
        knobs: Knob values in force.
        perturbation_rngs: The member's intervention noise generators, by intervention name.
        run: The recipe's own state (weights, optimizer, data or inner env, generators).
    """

    seed: int
    updates: int
    diverged: bool
    knobs: Mapping[str, float]
    perturbation_rngs: Mapping[str, np.random.Generator]
    run: Mapping[str, Any]


class PopulationTrainer(abc.ABC):
    """Owns ``n_members`` runs of one recipe and advances them in one batched computation.

    The declaration (``channels``, ``knob_specs``, ``events``, ``performance_range``) is the
    one of the recipe's single-run trainer, read from an instance of it that is never started;
    a subclass implements the member hooks. The base class validates every argument (raising
    ``ValueError`` naming the field before any work), and keeps the per-member seeds, update
    counts, divergence flags, knobs and perturbation generators.

    A member that diverges stops changing (its weights, optimizer and inner state are frozen)
    until ``reset_member`` or ``restore`` gives it a new state; the others carry on.

    Attributes:
        channels: Telemetry channels, in the column order of ``PopulationTelemetry.values``.
        knob_specs: Each member's live settings.
        events: Names of the one-off events ``apply_event`` accepts.
        performance_range: ``(floor, ceiling)`` of each member's performance.
        n_members: Number of members ``N``.
        seeds: Each member's seed (``None`` before its first reset).
        updates: Shape ``(N,)``: updates each member has run since its reset.
        diverged: Shape ``(N,)``: members that have diverged.
    """

    def __init__(self, n_members: int, recipe: Trainer) -> None:
        check_positive_int("n_members", n_members)
        self.channels: tuple[ChannelSpec, ...] = tuple(recipe.channels)
        self.knob_specs: tuple[KnobSpec, ...] = tuple(recipe.knob_specs)
        self.events: tuple[str, ...] = tuple(recipe.events)
        self.performance_range: tuple[float, float] = recipe.performance_range
        self.n_members = int(n_members)
        self._specs = {s.name: s for s in self.knob_specs}
        self._knobs = {s.name: np.full(self.n_members, s.default) for s in self.knob_specs}
        self.seeds: list[int | None] = [None] * self.n_members
        self.updates = np.zeros(self.n_members, dtype=np.int64)
        self.diverged = np.zeros(self.n_members, dtype=bool)
        self._perturbation_rngs: list[dict[str, np.random.Generator]] = [
            {} for _ in range(self.n_members)
        ]

    # -- the protocol -------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int]) -> None:
        """Start every member afresh: member ``i`` from ``seeds[i]`` (one seed per member)."""
        if isinstance(seeds, (str, bytes)) or len(seeds) != self.n_members:
            raise ValueError(
                f"seeds must be a sequence of {self.n_members} integers, got {seeds!r}"
            )
        checked = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
        for member, seed in enumerate(checked):
            self.reset_member(member, seed)

    def reset_member(self, member: int, seed: int) -> None:
        """Start member ``member`` afresh from ``seed``; the other members are untouched."""
        i, seed = self._member(member), check_seed("seed", seed)
        self.seeds[i] = seed
        self.updates[i] = 0
        self.diverged[i] = False
        for spec in self.knob_specs:
            self._knobs[spec.name][i] = spec.default
        self._perturbation_rngs[i] = {}
        self._reset_member(i, seed)

    def advance(self, k: int) -> PopulationTelemetry:
        """Run ``k`` updates of every live member; a member that diverges stops early."""
        check_positive_int("k", k)
        self._require_reset()
        telemetry = self._advance(int(k))
        self.updates += telemetry.n_updates
        self.diverged |= telemetry.diverged
        return telemetry

    @abc.abstractmethod
    def evaluate(self) -> np.ndarray:
        """Shape ``(N,)``: each member's performance as of its latest evaluation (no training)."""

    def snapshot(self, member: int) -> MemberSnapshot:
        """A copy of member ``member``'s whole state."""
        i = self._member(member)
        self._require_reset(i)
        return MemberSnapshot(
            seed=int(self.seeds[i]),  # type: ignore[arg-type]
            updates=int(self.updates[i]),
            diverged=bool(self.diverged[i]),
            knobs={name: float(values[i]) for name, values in self._knobs.items()},
            perturbation_rngs=copy.deepcopy(self._perturbation_rngs[i]),
            run=self._member_state(i),
        )

    def restore(self, member: int, snapshot: MemberSnapshot) -> None:
        """Put ``snapshot`` (of any member of a population of this recipe) into slot ``member``."""
        i = self._member(member)
        if not isinstance(snapshot, MemberSnapshot):
            raise ValueError(f"snapshot must be a MemberSnapshot, got {type(snapshot).__name__}")
        self.seeds[i] = snapshot.seed
        self.updates[i] = snapshot.updates
        self.diverged[i] = snapshot.diverged
        for name, value in snapshot.knobs.items():
            self._knobs[name][i] = value
        self._perturbation_rngs[i] = copy.deepcopy(dict(snapshot.perturbation_rngs))
        self._load_member_state(i, snapshot.run)

    def copy_member(self, src: int, dst: int) -> None:
        """Fork: slot ``dst`` continues from exactly member ``src``'s state."""
        src, dst = self._member(src, "src"), self._member(dst, "dst")
        if src != dst:
            self.restore(dst, self.snapshot(src))

    # -- knobs and events ---------------------------------------------------------------------
    def knobs(self, member: int) -> dict[str, float]:
        """The knob values in force for member ``member`` (a copy)."""
        i = self._member(member)
        return {name: float(values[i]) for name, values in self._knobs.items()}

    def knob_values(self, name: str) -> np.ndarray:
        """Shape ``(N,)``: knob ``name`` of every member (a copy)."""
        self.knob_spec(name)
        return self._knobs[name].copy()

    def knob_spec(self, name: str) -> KnobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__} has no knob {name!r}; knobs: {sorted(self._specs)}"
            ) from None

    def set_knob(self, member: int, name: str, value: float) -> None:
        i = self._member(member)
        self._knobs[name][i] = self.knob_spec(name).validate(value)

    def reset_knob(self, member: int, name: str) -> None:
        i = self._member(member)
        self._knobs[name][i] = self.knob_spec(name).default

    def apply_event(self, member: int, name: str, magnitude: float) -> None:
        """Apply a one-off event (weight noise, optimizer reset...) to member ``member`` only."""
        i = self._member(member)
        if name not in self.events:
            raise ValueError(f"{type(self).__name__} has no event {name!r}; events: {self.events}")
        self._require_reset(i)
        self._apply_event(i, name, float(magnitude))

    def perturbation_rng(self, member: int, name: str) -> np.random.Generator:
        """Member ``member``'s generator of one intervention's noise (the single-run trainer's
        stream for the same seed, so a member and its run draw the same perturbations)."""
        i = self._member(member)
        self._require_reset(i)
        rngs = self._perturbation_rngs[i]
        if name not in rngs:
            rngs[name] = perturbation_generator(int(self.seeds[i]), name)  # type: ignore[arg-type]
        return rngs[name]

    @property
    def targets(self) -> tuple[str, ...]:
        """Knob and event names: what interventions can act through."""
        return tuple(self._specs) + tuple(self.events)

    # -- for subclasses -----------------------------------------------------------------------
    @abc.abstractmethod
    def _reset_member(self, member: int, seed: int) -> None: ...

    @abc.abstractmethod
    def _advance(self, k: int) -> PopulationTelemetry: ...

    @abc.abstractmethod
    def _apply_event(self, member: int, name: str, magnitude: float) -> None: ...

    @abc.abstractmethod
    def _member_state(self, member: int) -> dict[str, Any]:
        """A copy of the recipe's state of one member (shares nothing with the population)."""

    @abc.abstractmethod
    def _load_member_state(self, member: int, state: Mapping[str, Any]) -> None:
        """Copy ``state`` (from ``_member_state``) into slot ``member``; ``state`` stays intact."""

    def _live(self) -> np.ndarray:
        """Indices of the members that have not diverged."""
        return np.flatnonzero(~self.diverged)

    def _member(self, member: int, field: str = "member") -> int:
        """``member`` as an index, or ``ValueError`` naming ``field`` and the allowed range."""
        bad = isinstance(member, bool) or not isinstance(member, (int, np.integer))
        if bad or not 0 <= member < self.n_members:
            raise ValueError(
                f"{field} must be an integer in [0, {self.n_members - 1}], got {member!r}"
            )
        return int(member)

    def _require_reset(self, member: int | None = None) -> None:
        members = range(self.n_members) if member is None else (member,)
        if any(self.seeds[i] is None for i in members):
            raise RuntimeError(f"{type(self).__name__}: call reset(seeds) before using members")


def check_seed(field: str, seed: int) -> int:
    """``seed`` as a non-negative int, or ``ValueError`` naming ``field``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{field} must be an integer >= 0, got {seed!r}")
    return int(seed)


def member_generators(seed: int) -> tuple[torch.Generator, np.random.Generator]:
    """A member's own training generators: torch (initialisation, sampling, data order) and
    numpy (inner-environment resets), both derived from ``seed`` through ``SeedSequence``."""
    torch_seq, numpy_seq = np.random.SeedSequence(seed).spawn(2)
    torch_seed = int(torch_seq.generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(torch_seed), np.random.default_rng(numpy_seq)
