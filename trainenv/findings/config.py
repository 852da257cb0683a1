"""The findings' settings per paradigm: data in ``paradigms.yaml``, validated here.

:func:`quick_config` and :func:`full_config` read the file shipped beside this module;
:func:`load_config` reads any file of the same shape. Each paradigm is written once with its
full settings; a ``quick:`` block overrides some of them for the quick version.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainenv.audit.plan import AuditPlan, InterventionGrid, Recipe, Stabilizer
from trainenv.findings.sampling import SampleSizeRule
from trainenv.findings.verdicts import FALSE_ALARM_RATE
from trainenv.warning.simulation import Ramp, Task, tasks_for

__all__ = [
    "CONFIG_FILE",
    "FULL_EXPECTED_MINUTES",
    "FindingsConfig",
    "Paradigm",
    "StochasticityKnob",
    "full_config",
    "load_config",
    "quick_config",
]

CONFIG_FILE = Path(__file__).with_name("paradigms.yaml")
# The full run with 2 workers, measured (commit 17ee642, 2 cores): 71 min wall, 4,375 CPU-s,
# the first 22 min shared with three other jobs (load ~5). Claim 3 took 14 min, Digits'
# claims 1-2 (12,640 runs) 7 min, CartPole's (2,480 + 620 runs at the rule's cap) 30 min,
# TinyLM's (240 runs, one per task) 18 min. Each report states its own wall time.
FULL_EXPECTED_MINUTES = 70

Setting = int | float | list[int]  # a trainer setting of claim 1's grid (ints stay ints: run
# ids hash them; a list is a layer-width tuple such as hidden)
MIN_LEVELS = 3  # claim 2's dose-response: a knob at this many levels or more (plus off)
STOCHASTICITY_KNOBS = ("grad_noise", "dropout", "entropy_bonus", "input_noise")
"""Claim 2's knobs of controlled stochasticity (``input_noise`` held on: observation noise)."""


class StochasticityKnob(BaseModel):
    """Claim 2's stochasticity knob at several levels, each held on for the whole run.

    Attributes:
        name: One of :data:`STOCHASTICITY_KNOBS` that the paradigm's trainer has.
        levels: Its magnitudes, at least :data:`MIN_LEVELS`, increasing, each in the
            intervention's range.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    levels: tuple[float, ...]

    @model_validator(mode="after")
    def _valid_levels(self) -> StochasticityKnob:
        if self.name not in STOCHASTICITY_KNOBS:
            raise ValueError(
                f"stochasticity knob must be one of {list(STOCHASTICITY_KNOBS)}, got {self.name!r}"
            )
        if len(self.levels) < MIN_LEVELS or list(self.levels) != sorted(set(self.levels)):
            raise ValueError(
                f"levels of {self.name!r} must be >= {MIN_LEVELS} distinct magnitudes in "
                f"increasing order, got {list(self.levels)}"
            )
        self.stabilizers()  # each level a valid held-on knob (its name and range)
        return self

    def stabilizers(self) -> tuple[Stabilizer, ...]:
        return tuple(Stabilizer(name=self.name, magnitude=level) for level in self.levels)


class Paradigm(BaseModel):
    """How one kind of training run is tested.

    Attributes:
        name: ``"supervised"``, ``"RL"`` or ``"LM"``.
        env: The registered environment; its registered recipe is the base recipe.
        grid: Claim 1's recipes besides the base: label -> trainer kwargs. In the data file,
            ``{axes: {name: [values]}}`` (every combination) or ``{points: [{name: value}]}``,
            optionally ``under:`` a trainer keyword (``algo_kwargs``) the settings go under.
        stochasticity: Claim 2's stochasticity knobs, each at several levels held on for the
            whole run; the first is the paradigm's own, which its verdict reads.
        interventions: The perturbations audited (claims 1 and 2).
        onset: Steps of unperturbed training before a perturbation.
        horizon: Steps compared after the onset; episodes last ``onset + horizon`` steps, so
            the unperturbed branch's last ``p`` is the run's final performance.
        sample_size: How many seeds claims 1 and 2 get: the rule
            (:class:`~trainenv.findings.sampling.SampleSizeRule`) and its targets.
        ramps: Claim 3's gradual perturbations (on the registered recipe and episode length,
            which the env's reference band was calibrated on). In the data file,
            ``{steps, onset, ends: [[intervention, start, end]]}``.
        warning_seeds: Seeds of claim 3.
        warning_horizon: Claim 3's horizon ``H``, in steps.
        calibration_seeds: Claim 3's unperturbed calibration runs, which the full and
            leak-free meta-states are fitted on (seeds as ``trainenv calibrate``'s).
        claims: The claims tested on this paradigm.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    env: str
    grid: dict[str, dict[str, Any]]
    stochasticity: tuple[StochasticityKnob, ...] = Field(min_length=1)
    interventions: tuple[InterventionGrid, ...] = Field(min_length=1)
    onset: int = Field(ge=0)
    horizon: int = Field(ge=1)
    sample_size: SampleSizeRule
    ramps: tuple[Ramp, ...] = Field(min_length=1)
    warning_seeds: int = Field(ge=2)
    warning_horizon: int = Field(ge=0)
    calibration_seeds: int = Field(default=8, ge=2)
    claims: tuple[Literal[1, 2, 3], ...] = (1, 2, 3)

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """The data file's shorthands: a grid of axes or points, ramps as their ends."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if isinstance(data.get("grid"), Mapping) and {"axes", "points"} & set(data["grid"]):
            data["grid"] = _grid_recipes(**data["grid"])
        if isinstance(data.get("ramps"), Mapping):
            data["ramps"] = _ramps(**data["ramps"])
        return data

    @property
    def short(self) -> str:
        return self.env.split("/")[-1]

    @property
    def base(self) -> Recipe:
        return self._recipe(f"{self.short} (registered)", {})

    def dose_recipes(self, knob: StochasticityKnob) -> dict[float, Recipe]:
        """Claim 2's recipes of one knob: level -> the registered recipe held at it."""
        return {
            s.magnitude: self._recipe(f"{self.short} +{s.label()}", {}, (s,))
            for s in knob.stabilizers()
        }

    def grid_recipes(self) -> list[Recipe]:
        """Claim 1's recipes: the base, the grid, then claim 2's dose recipes where claim 2
        is tested (they are recipes too, and their runs are shared)."""
        grid = [self._recipe(f"{self.short} {label}", kw) for label, kw in self.grid.items()]
        return [self.base, *grid, *(self.dose_recipes_all() if 2 in self.claims else [])]

    def dose_recipes_all(self) -> list[Recipe]:
        """Every knob's dose recipes, knob by knob."""
        return [r for knob in self.stochasticity for r in self.dose_recipes(knob).values()]

    def plan(self, workers: int, seeds: int | None = None) -> AuditPlan:
        """The audit behind claims 1 and 2 (one plan, so runs shared by both run once), on
        ``seeds`` seeds (default: the sample-size rule's start)."""
        if 1 in self.claims:
            recipes = self.grid_recipes()
        else:
            recipes = [self.base, *(self.dose_recipes_all() if 2 in self.claims else [])]
        return AuditPlan(
            recipes=tuple(recipes),
            interventions=self.interventions,
            onsets=(self.onset,),
            horizon=self.horizon,
            seeds=tuple(range(seeds or self.sample_size.start)),
            # populations where every recipe has a population form (Digits, CartPole and
            # their grids), else one run per task (TinyLM): the plan's own auto rule
            backend="auto",
            workers=workers,
        )

    def warning_tasks(self) -> list[Task]:
        return tasks_for(self.name, self.env, self.ramps, range(self.warning_seeds),
                         calibration=self.calibration_seeds)  # fmt: skip

    def _recipe(
        self, name: str, trainer_kwargs: Mapping[str, Any], stabilizers: tuple[Stabilizer, ...] = ()
    ) -> Recipe:
        env_kwargs: dict[str, Any] = {"max_steps": self.onset + self.horizon}
        if trainer_kwargs:
            env_kwargs["trainer_kwargs"] = dict(trainer_kwargs)
        return Recipe(name=name, env=self.env, env_kwargs=env_kwargs, stabilizers=stabilizers)


class FindingsConfig(BaseModel):
    """A findings run: its paradigms (cheapest first) and statistics settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    paradigms: tuple[Paradigm, ...] = Field(min_length=1)
    n_boot: int = Field(default=1000, ge=10)
    false_alarm_rate: float = Field(default=FALSE_ALARM_RATE, gt=0.0, lt=1.0)


def load_config(version: str, path: str | Path = CONFIG_FILE) -> FindingsConfig:
    """The ``version`` (``"quick"`` or ``"full"``) of the findings described in ``path``."""
    data = yaml.safe_load(Path(path).read_text())
    versions = data.get("versions", {})
    if version not in versions:
        raise ValueError(f"version must be one of {sorted(versions)}, got {version!r}")
    paradigms = []
    for entry in data["paradigms"]:
        settings = {k: v for k, v in entry.items() if k != "quick"}
        if version == "quick":
            quick = dict(entry.get("quick", {}))
            keep = quick.pop("keep_ramps", None)
            settings.update(quick)
            if keep is not None:
                settings["ramps"] = {**settings["ramps"], "ends": settings["ramps"]["ends"][:keep]}
        paradigms.append(settings)
    return FindingsConfig(name=version, paradigms=tuple(paradigms), **versions[version])


def quick_config() -> FindingsConfig:
    """Claims 1-3 on Digits-MLP, claim 3 on CartPole-PPO and TinyLM too: a few minutes on 2
    cores."""
    return load_config("quick")


def full_config() -> FindingsConfig:
    """Every claim on Digits-MLP, CartPole-PPO and TinyLM: about
    :data:`FULL_EXPECTED_MINUTES` minutes on 2 cores."""
    return load_config("full")


def _grid_recipes(
    axes: Mapping[str, list[Setting]] | None = None,
    points: list[Mapping[str, Setting]] | None = None,
    under: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Claim 1's grid as label -> trainer kwargs, labelled ``"a=1 b=2"`` (a list value
    ``"hidden=32x32"``)."""
    if (axes is None) == (points is None):
        raise ValueError("grid: give either axes (every combination) or points")
    if axes is not None:
        names = list(axes)
        points = [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]
    assert points is not None
    grid = {}
    for point in points:
        label = " ".join(f"{n}={_label(v)}" for n, v in point.items())
        grid[label] = {under: dict(point)} if under else dict(point)
    return grid


def _label(value: Setting) -> str:
    return "x".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"


def _ramps(steps: int, onset: int, ends: list[tuple[str, float, float]]) -> tuple[Ramp, ...]:
    """Ramps ``(intervention, start, end)`` over ``steps`` steps from ``onset`` (magnitudes as
    floats: claim 3's run ids hash the ramps' text)."""
    return tuple(Ramp(name, float(lo), float(hi), steps, onset) for name, lo, hi in ends)
