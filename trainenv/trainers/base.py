"""The trainer protocol: the object that owns one run."""

from __future__ import annotations

import abc
import copy
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainenv.core.knobs import KnobSpec
from trainenv.core.rng import (
    ALL_STREAMS,
    STREAMS,
    RunRng,
    check_seed,
    perturbation_generator,
)
from trainenv.core.telemetry import ChannelSpec, Telemetry


@dataclass(frozen=True, kw_only=True)
class TrainerSpec:
    """What a trainer declares about its run, returned by :meth:`Trainer._declare`.

    Attributes:
        channels: Telemetry channels, in the column order of ``Telemetry.values``.
        performance_range: ``(floor, ceiling)`` of ``evaluate()``: chance-level performance
            and the best attainable (finite, ``floor < ceiling``). Environments normalise
            performance with it.
        knobs: The run's live settings (what knob interventions act through).
        events: Names of the one-off events ``apply_event`` accepts.
        rng_streams: The process-global generators the run draws from (``"torch"``,
            ``"numpy"``, ``"python"``, and ``"cuda"`` for a run on a CUDA device); their states are
            the run's own and are swapped in around its work. Declare the three host streams
            unless the trainer is sure (the default); a :class:`TorchTrainer` on CUDA adds
            ``"cuda"`` itself.
    """

    channels: tuple[ChannelSpec, ...]
    performance_range: tuple[float, float]
    knobs: tuple[KnobSpec, ...] = ()
    events: tuple[str, ...] = ()
    rng_streams: tuple[str, ...] = ALL_STREAMS

    def __post_init__(self) -> None:
        for field in ("channels", "knobs", "events", "rng_streams"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        _check_unique("channels", [c.name for c in self.channels])
        _check_unique("knobs and events", [k.name for k in self.knobs] + list(self.events))
        floor, ceiling = (float(v) for v in self.performance_range)
        if not (math.isfinite(floor) and math.isfinite(ceiling) and floor < ceiling):
            raise ValueError(
                f"performance_range must be finite (floor, ceiling) with floor < ceiling, "
                f"got {self.performance_range}"
            )
        object.__setattr__(self, "performance_range", (floor, ceiling))
        unknown = sorted(set(self.rng_streams) - set(STREAMS))
        if unknown:
            raise ValueError(f"rng_streams has unknown streams {unknown}; known: {STREAMS}")


def _check_unique(field: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{field} must have unique names; repeated: {repeated}")


@dataclass(frozen=True)
class Snapshot:
    """The whole state of a run at one moment, immutable by contract (``restore`` copies out
    of it, so one snapshot serves any number of restores and forks may share it).

    Attributes:
        seed: The run's seed.
        updates: Updates run since ``reset``.
        knobs: Knob values in force.
        rng: The run's global generator states (torch, numpy, Python, as declared).
        perturbation_rngs: The interventions' noise generators, by intervention name.
        run: The subclass's own state (:meth:`Trainer._state`).
    """

    seed: int | None
    updates: int
    knobs: Mapping[str, float]
    rng: RunRng
    perturbation_rngs: Mapping[str, np.random.Generator]
    run: Any


class Trainer(abc.ABC):
    """Owns one inner training run.

    A subclass declares its run in :meth:`_declare` (channels, knobs, events, performance
    range, RNG streams: a :class:`TrainerSpec`, read once by the constructor) and implements
    the ``_reset``/``_advance``/``_apply_event`` hooks, and ``_state``/``_load_state``: the
    part of a snapshot only the subclass knows. The base class keeps the knobs, the update
    count, the run's own random state (swapped in around all of the run's work) and the
    perturbation generators, and wraps them around ``_state`` in :meth:`snapshot`.

    A subclass sets whatever its declaration depends on (its settings) before calling
    ``super().__init__()``. Torch work in its constructor (building a dataset) runs under
    ``torch_threads(self.num_threads)``, like the run's: in a worker process forked after the
    parent ran a parallel region (``gymnasium.make_vec(..., vectorization_mode="async")``), a
    multi-threaded op deadlocks in GNU OpenMP.

    Args:
        num_threads: Torch threads for the run's work (see :attr:`num_threads`).

    Attributes:
        spec: The declaration (see :class:`TrainerSpec`); ``channels``, ``knob_specs``,
            ``events``, ``performance_range`` and ``rng_streams`` read it.
        seed: The seed of the current run (``None`` before the first ``reset``).
        updates: Updates run since ``reset``.
    """

    def __init__(self, *, num_threads: int | None = 1) -> None:
        self.num_threads = num_threads
        spec = self._declare()
        if not isinstance(spec, TrainerSpec):
            raise TypeError(f"{type(self).__name__}._declare() must return a TrainerSpec")
        self.spec = spec
        self._divergent = np.array([c.diverges_if_nonfinite for c in spec.channels], dtype=bool)
        self._specs = {s.name: s for s in spec.knobs}
        self._knobs = {s.name: s.default for s in spec.knobs}
        self.seed: int | None = None
        self.updates = 0
        self._rng: RunRng | None = None
        self._perturbation_rngs: dict[str, np.random.Generator] = {}
        self._out_of_range_said = False  # evaluate() left performance_range in this run

    @abc.abstractmethod
    def _declare(self) -> TrainerSpec:
        """The run's declaration; called once, by ``Trainer.__init__``."""

    @property
    def num_threads(self) -> int | None:
        """Torch threads the run's work uses (set around it and restored after, like the RNG
        states); ``None`` leaves the process's setting alone. Default 1: the built-in recipes
        are tiny, and slow down many times over with two threads on a busy machine."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        if value is not None:
            check_positive_int("num_threads", value)
        self._num_threads = None if value is None else int(value)

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        """Telemetry channels, in the column order of ``Telemetry.values``."""
        return self.spec.channels

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The channels' names, in column order."""
        return tuple(c.name for c in self.spec.channels)

    @property
    def knob_specs(self) -> tuple[KnobSpec, ...]:
        """The run's live settings."""
        return self.spec.knobs

    @property
    def events(self) -> tuple[str, ...]:
        """Names of the one-off events ``apply_event`` accepts."""
        return self.spec.events

    @property
    def performance_range(self) -> tuple[float, float]:
        """``(floor, ceiling)`` of ``evaluate()``."""
        return self.spec.performance_range

    @property
    def rng_streams(self) -> tuple[str, ...]:
        """The process-global generators whose states are the run's own."""
        return self.spec.rng_streams

    # -- the protocol -------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Start a fresh run from ``seed``: new weights, optimizer, data order, RNGs, knobs.

        ``seed`` is any non-negative integer; the run's generator seeds derive from it through
        ``SeedSequence`` (:func:`~trainenv.core.rng.derive_seed`). A bad seed raises
        ``ValueError`` before anything changes.
        """
        seed = check_seed("seed", seed)
        rng = RunRng(seed, self.rng_streams)
        self.seed, self.updates, self._rng = seed, 0, rng
        self._knobs = {s.name: s.default for s in self.knob_specs}
        self._perturbation_rngs = {}
        with torch_threads(self._num_threads), rng.active():
            self._reset(seed)
        self._out_of_range_said = False
        self._check_performance()

    def advance(self, k: int) -> Telemetry:
        """Run ``k`` updates and return their telemetry (stops early if the run diverges)."""
        check_positive_int("k", k)
        with self._active():
            telemetry = self._advance(int(k))
        self.updates += len(telemetry.values)
        self._check_performance()
        return telemetry

    @abc.abstractmethod
    def evaluate(self) -> float:
        """The run's performance as of its latest evaluation (cheap: no extra training)."""

    def _check_performance(self) -> None:
        """Warn, once per run, when ``evaluate()`` leaves ``performance_range`` by more than
        :data:`RANGE_TOLERANCE` of its width: normalised performance, and the rewards an env
        computes from it, would leave ``[0, 1]`` without a word (a placeholder ``-1e9`` gave a
        step reward of ``99999999.6``). Non-finite values are divergence, not range errors."""
        if self._out_of_range_said:
            return
        value = self.evaluate()
        floor, ceiling = self.performance_range
        slack = RANGE_TOLERANCE * (ceiling - floor)
        if math.isfinite(value) and not floor - slack <= value <= ceiling + slack:
            self._out_of_range_said = True
            warnings.warn(
                f"{type(self).__name__}.evaluate() returned {value:g} after {self.updates} "
                f"updates, outside its performance_range ({floor:g}, {ceiling:g}): normalised "
                f"performance (and an env's reward) leaves [0, 1]. Return values within the "
                f"range, or declare the range evaluate() spans; said once per run.",
                UserWarning,
                stacklevel=3,
            )

    def snapshot(self) -> Snapshot:
        """A copy of the run's whole state: the base's (knobs, update count, the run's RNG
        states, perturbation generators) around the subclass's :meth:`_state`."""
        rng = self._require_run()
        with torch_threads(self._num_threads):  # copying tensors is torch work too
            run = self._state()
        return Snapshot(
            seed=self.seed,
            updates=self.updates,
            knobs=dict(self._knobs),
            rng=copy.copy(rng),  # its states are replaced, never mutated: share them
            perturbation_rngs=copy.deepcopy(self._perturbation_rngs),
            run=run,
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Return the run to ``snapshot``; the snapshot stays valid for further restores."""
        if not isinstance(snapshot, Snapshot):
            raise ValueError(f"snapshot must be a Snapshot, got {type(snapshot).__name__}")
        self._require_run()
        with torch_threads(self._num_threads):
            self._load_state(snapshot.run)
        self.seed, self.updates, self._knobs = snapshot.seed, snapshot.updates, dict(snapshot.knobs)
        self._rng = copy.copy(snapshot.rng)
        self._perturbation_rngs = copy.deepcopy(dict(snapshot.perturbation_rngs))

    def fork(self) -> Trainer:
        """An independent trainer continuing from exactly this run's state."""
        memo = {id(obj): obj for obj in self._shared()}
        with torch_threads(self._num_threads):
            return copy.deepcopy(self, memo)

    # -- knobs and events ---------------------------------------------------------------------
    @property
    def knobs(self) -> Mapping[str, float]:
        """The knob values in force (a read-only copy)."""
        return dict(self._knobs)

    def knob_spec(self, name: str) -> KnobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__} has no knob {name!r}; knobs: {sorted(self._specs)}"
            ) from None

    def set_knob(self, name: str, value: float) -> None:
        self._knobs[name] = self.knob_spec(name).validate(value)

    def reset_knob(self, name: str) -> None:
        self._knobs[name] = self.knob_spec(name).default

    def apply_event(self, name: str, magnitude: float) -> None:
        """Apply a one-off event (weight noise, optimizer reset...) of the given magnitude."""
        if name not in self.events:
            raise ValueError(f"{type(self).__name__} has no event {name!r}; events: {self.events}")
        with self._active():
            self._apply_event(name, float(magnitude))

    def info(self) -> dict[str, float]:
        """Extra per-step facts for the env's ``info`` (e.g. perplexity); cheap, no training."""
        return {}

    def perturbation_rng(self, name: str) -> np.random.Generator:
        """The generator of one intervention's noise, separate from training randomness."""
        if self.seed is None:
            raise RuntimeError("call reset(seed) first")
        if name not in self._perturbation_rngs:
            self._perturbation_rngs[name] = perturbation_generator(self.seed, name)
        return self._perturbation_rngs[name]

    @property
    def targets(self) -> tuple[str, ...]:
        """Knob and event names: what interventions can act through."""
        return tuple(self._specs) + tuple(self.events)

    # -- for subclasses -----------------------------------------------------------------------
    @abc.abstractmethod
    def _reset(self, seed: int) -> None:
        """Build a fresh run from ``seed`` (called inside the run's own RNG states)."""

    def _advance(self, k: int) -> Telemetry:
        """Run up to ``k`` updates with :meth:`_update`, stopping after the first one
        :meth:`_diverged` flags. Override it instead for a run that computes ``k`` updates
        at once."""
        rows = np.empty((k, len(self.channels)))
        for i in range(k):
            rows[i] = self._update(self.updates + i + 1)
            if self._diverged(rows[i]):
                return Telemetry(rows[: i + 1], diverged=True)
        return Telemetry(rows)

    def _update(self, number: int) -> Sequence[float] | np.ndarray:
        """Run update number ``number`` (1-based) of the run; return its telemetry row, one
        value per declared channel."""
        raise NotImplementedError(f"{type(self).__name__}: implement _update or _advance")

    def _diverged(self, row: np.ndarray) -> bool:
        """Whether the update that produced ``row`` diverged: a channel declared
        ``diverges_if_nonfinite`` is non-finite in it."""
        return not np.isfinite(row[self._divergent]).all()

    @abc.abstractmethod
    def _apply_event(self, name: str, magnitude: float) -> None: ...

    @abc.abstractmethod
    def _state(self) -> Any:
        """The subclass's part of a snapshot: everything of the run the base does not keep
        (weights, optimizer, data position, inner environment, own generators).

        Return copies, never live objects: a snapshot must not change as the run goes on
        (``clone_tree`` copies state dicts quickly).
        """

    @abc.abstractmethod
    def _load_state(self, state: Any) -> None:
        """Put ``state`` (from :meth:`_state`) back in force, copying out of it: the same
        snapshot may be restored again later."""

    def _shared(self) -> Iterable[object]:
        """Immutable objects a fork may share instead of copying (datasets, corpora)."""
        return ()

    @contextmanager
    def _active(self) -> Iterator[None]:
        """The run's own process-global state in force: its RNG states and thread count."""
        rng = self._require_run()
        with torch_threads(self._num_threads), rng.active():
            yield

    def _require_run(self) -> RunRng:
        if self._rng is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(seed) before using the run")
        return self._rng


RANGE_TOLERANCE = 0.5
"""How far, as a fraction of its width, ``evaluate()`` may stray outside ``performance_range``
unremarked. The floor is chance level, and a run can legitimately do worse than chance: an
untrained classifier scored 0.011 on digits (chance 0.1), a collapsed RL policy returns less than
a random one. What the warning is for is a value in the wrong units or a placeholder."""


def check_positive_int(name: str, value: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``: unchanged), then restore the count."""
    outer = torch.get_num_threads()
    if n is None or n == outer:  # setting it re-sizes torch's pool: skip when already right
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(outer)
