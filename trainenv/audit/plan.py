"""Audit plans: what to perturb, how hard, when, on which recipes and seeds.

A plan is a pydantic model, written in Python or YAML::

    env: trainenv/Digits-MLP-v0          # or `recipes:`, a list of {name, env, env_kwargs,
    env_kwargs: {max_steps: 40}          #   stabilizers} to compare several recipes
    stabilizers: [{name: grad_clip, magnitude: 1.0}]   # optional: the recipe "with clipping"
    interventions:
      - {name: lr_shock, magnitudes: [10, 100, 1000]}
      - {name: weight_noise, magnitudes: [0.3, 1, 3]}
    onsets: [10]          # steps of unperturbed training before the perturbation
    horizon: 20           # steps compared after the onset
    seeds: 4              # or a list of seeds
    tolerance: 0.05       # recovery band below the unperturbed branch, in units of p
    backend: auto         # population | serial | process | ray; auto: population if it can
    workers: 2

Validation happens in two stages, both before any run: the model itself checks names,
ranges and shapes against the intervention registry (cheap); :meth:`AuditPlan.check` then
builds each recipe's environment once to check that its trainer supports every intervention
and that ``onset + horizon`` fits in its episode.

Meaning of the fields that shape a run:

- ``duration`` of an intervention is the perturbation window in steps. A knob intervention
  (e.g. ``lr_shock``) stays set for the whole window, which must be at least the registered
  duration of the intervention (the env keeps a knob set that long once applied; the runner
  re-issues the action to extend it). An event (e.g. ``weight_noise``) fires on every step of
  the window (default 1: a single shock).
- Stabilizers are *held on* for the whole run, on the shared prefix and on both branches of
  every pair, re-applied every step: the recipe is "training with clipping", and the paired
  comparison stays fair because both branches carry the stabilizer. Only knobs can be held on
  (an event such as ``rollback`` is an action, not a setting); a perturbation's knob held on is
  a condition of training (``input_noise``: observation noise throughout), and a perturbation
  of the same knob overrides the held value while it lasts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainenv.audit.plan_errors import plan_errors, yaml_problem
from trainenv.core import interventions as registry
from trainenv.core.interventions import Intervention, Role

if TYPE_CHECKING:
    from trainenv.env import TrainEnv
    from trainenv.vector import PopulationVectorEnv

BackendName = Literal["auto", "population", "serial", "process", "ray"]  # see audit.backends
RESERVED_ENV_KWARGS = ("action_mode", "interventions")  # the audit drives the action space
DEFAULT_ENV = "trainenv/CartPole-PPO-v0"
SHORTHAND_FIELDS = ("env", "env_kwargs", "stabilizers")  # a plan's one-recipe form


class Stabilizer(BaseModel):
    """A knob held on for the whole run at ``magnitude``: a stabilizer (``grad_clip``), or a
    perturbation's knob held as a condition of training (``input_noise``: observation noise
    throughout). A perturbation of the same knob overrides the held value while it lasts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    magnitude: float

    @field_validator("name")
    @classmethod
    def _knob_stabilizer(cls, name: str) -> str:
        if registry.get(name).knob is None:
            held = _held_knobs()
            stabilizers = [i.name for i in held if i.role is Role.STABILIZER]
            others = [i.name for i in held if i.role is not Role.STABILIZER]
            raise ValueError(
                f"{name!r} cannot be held on (an event, not a knob); knob stabilizers: "
                f"{stabilizers}; perturbation knobs: {others}"
            )
        return name

    @model_validator(mode="after")
    def _in_range(self) -> Stabilizer:
        registry.get(self.name).validate_magnitude(self.magnitude)
        return self

    def label(self) -> str:
        return f"{self.name}={self.magnitude:g}"


class Recipe(BaseModel):
    """A training recipe: a registered environment, its kwargs and the stabilizers held on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", description="label in reports; default: env id + stabilizers")
    env: str
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    stabilizers: tuple[Stabilizer, ...] = ()

    @field_validator("env")
    @classmethod
    def _registered(cls, env: str) -> str:
        import gymnasium as gym

        import trainenv  # noqa: F401  (registers the environments)

        if env not in gym.registry:
            known = sorted(i for i in gym.registry if i.startswith("trainenv/"))
            raise ValueError(f"unknown environment {env!r}; trainenv environments: {known}")
        return env

    @field_validator("env_kwargs")
    @classmethod
    def _plain_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(kwargs) & set(RESERVED_ENV_KWARGS))
        if reserved:
            raise ValueError(f"{reserved} are set by the audit (it drives the action space)")
        try:
            json.dumps(kwargs)
        except TypeError as error:
            raise ValueError(f"must be plain data (YAML/JSON values): {error}") from None
        return kwargs

    @field_validator("stabilizers")
    @classmethod
    def _distinct(cls, stabilizers: tuple[Stabilizer, ...]) -> tuple[Stabilizer, ...]:
        names = [s.name for s in stabilizers]
        if len(set(names)) != len(names):
            raise ValueError(f"each stabilizer may appear once, got {names}")
        return stabilizers

    @model_validator(mode="after")
    def _default_name(self) -> Recipe:
        if not self.name:
            label = "+".join([self.env.split("/")[-1], *(s.label() for s in self.stabilizers)])
            object.__setattr__(self, "name", label)
        return self

    def key(self) -> dict[str, Any]:
        """What identifies the recipe's runs (for run ids)."""
        return self.model_dump(mode="json")

    def has_population(self) -> bool:
        """Whether the recipe has a population form: its env has a vector entry point whose
        population takes the recipe's ``env_kwargs`` (trainer settings included) and
        stabilizers. Checked by building a population of one, once per recipe and process
        (a few ms; the per-run env reports a bad setting with its own message)."""
        import gymnasium as gym

        if gym.spec(self.env).vector_entry_point is None:
            return False
        key = json.dumps(self.key(), sort_keys=True)
        if key not in _POPULATION_FORMS:
            try:
                self.make_population(1, [s.name for s in self.stabilizers] or None).close()
                _POPULATION_FORMS[key] = True
            except (TypeError, ValueError):  # a setting or stabilizer it does not take
                _POPULATION_FORMS[key] = False
        return _POPULATION_FORMS[key]

    def make_env(self, interventions: list[str] | None) -> TrainEnv:
        """The recipe's environment with continuous actions over ``interventions``
        (``None``: all its trainer supports)."""
        import gymnasium as gym

        env = gym.make(
            self.env, **self.env_kwargs, action_mode="continuous", interventions=interventions
        )
        return env.unwrapped  # type: ignore[return-value]

    def make_population(
        self, n_members: int, interventions: list[str] | None
    ) -> PopulationVectorEnv:
        """The recipe's population form: ``n_members`` runs of it as one vector env, with
        continuous actions over ``interventions`` (see :meth:`make_env`)."""
        import gymnasium as gym

        env = gym.make_vec(
            self.env, num_envs=n_members, vectorization_mode="vector_entry_point",
            **self.env_kwargs, action_mode="continuous", interventions=interventions,
        )  # fmt: skip
        return env.unwrapped  # type: ignore[return-value]


_POPULATION_FORMS: dict[str, bool] = {}  # recipe key -> has_population(), per process


class InterventionGrid(BaseModel):
    """A perturbation from the registry and the magnitudes to audit it at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    magnitudes: tuple[float, ...] = Field(min_length=1)
    duration: int | None = Field(default=None, ge=1, description="perturbation window, steps")

    @field_validator("name")
    @classmethod
    def _perturbation(cls, name: str) -> str:
        return registry.get_perturbation(name).name

    @model_validator(mode="after")
    def _valid_magnitudes(self) -> InterventionGrid:
        intervention = self.intervention
        for m in self.magnitudes:
            intervention.validate_magnitude(m)
        if list(self.magnitudes) != sorted(set(self.magnitudes)):
            raise ValueError(f"magnitudes must be distinct and increasing, got {self.magnitudes}")
        if self.duration is not None and self.duration < intervention.duration:
            raise ValueError(
                f"duration of {self.name!r} must be >= {intervention.duration} (once applied, "
                f"its knob {intervention.knob!r} stays set {intervention.duration} steps)"
            )
        return self

    @property
    def intervention(self) -> Intervention:
        return registry.get(self.name)

    @property
    def window(self) -> int:
        """Steps the perturbation acts for."""
        return self.duration if self.duration is not None else self.intervention.duration

    @property
    def issues(self) -> int:
        """Consecutive steps on which the runner issues the perturbation's action."""
        return self.window - self.intervention.duration + 1


class AuditPlan(BaseModel):
    """A plan of recipes x interventions x magnitudes x onsets x seeds (see module docstring).

    Attributes:
        recipes: The recipes audited (``env``/``env_kwargs``/``stabilizers`` at the top level
            are a shorthand for a single recipe).
        interventions: Perturbations and their magnitude grids.
        onsets: Steps of unperturbed training before the perturbation, each ``>= 0``.
        horizon: Steps after the onset over which the branches are compared.
        seeds: Run seeds (an integer ``n`` means ``0..n-1``).
        tolerance: Recovery band below the unperturbed branch, in units of normalised ``p``.
        backend: ``population`` (each seed's and onset's runs, several seeds at once, train
            as members of populations; needs every recipe's env to have a population form),
            ``serial``, ``process`` (local processes, one run each) or ``ray``; ``auto`` (the
            default): ``population`` where every recipe's env has one, else ``process``.
        workers: Parallel workers (process and population backends; default: the CPU count
            for process, 1 for population: its batches run in this process).
        address: Ray cluster address (``None``: a local Ray instance).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipes: tuple[Recipe, ...] = Field(min_length=1)
    interventions: tuple[InterventionGrid, ...] = Field(min_length=1)
    onsets: tuple[int, ...] = Field(min_length=1)
    horizon: int = Field(ge=1)
    seeds: tuple[int, ...] = Field(min_length=1)
    tolerance: float = Field(default=0.05, ge=0.0, le=1.0)
    backend: BackendName = "auto"
    workers: int | None = Field(default=None, ge=1)
    address: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "env" in data:
            if "recipes" in data:
                raise ValueError("give either `env` (one recipe) or `recipes`, not both")
            data = dict(data)
            recipe = {k: data.pop(k) for k in SHORTHAND_FIELDS if k in data}
            data["recipes"] = [recipe]
        if isinstance(data, dict) and isinstance(data.get("seeds"), int):
            n = data["seeds"]
            if n < 1:
                raise ValueError(f"seeds: an integer count must be >= 1, got {n}")
            data = {**data, "seeds": list(range(n))}
        return data

    @field_validator("onsets", "seeds")
    @classmethod
    def _distinct_non_negative(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 0 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"must be distinct integers >= 0, got {list(values)}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> AuditPlan:
        for field, names in (
            ("recipes", [r.name for r in self.recipes]),
            ("interventions", [g.name for g in self.interventions]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"{field}: names must be unique, got {names}")
        for i, grid in enumerate(self.interventions):
            if grid.window > self.horizon:
                raise ValueError(
                    f"interventions[{i}] ({grid.name}): its window of {grid.window} steps must "
                    f"fit in the horizon, <= {self.horizon}"
                )
        return self

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> AuditPlan:
        """The plan in the YAML file ``path`` (plain data: tags such as ``!!python/...``
        are refused, never run).

        Raises:
            ValueError: one line naming the file and the problem if the file is missing or
                unreadable, is not valid YAML or holds a tag; one line per problem, each
                naming the field and the allowed fields or values, if the plan is invalid.
        """
        import yaml

        path = Path(path)
        if not path.exists():
            raise ValueError(f"plan file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read plan file {str(path)!r}: {error}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}{yaml_problem(error)}") from None
        try:
            return cls.model_validate(data or {})
        except ValidationError as error:
            raise ValueError(plan_errors(error, data, cls, SHORTHAND_FIELDS, str(path))) from None

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    # -- checks that need the environments ----------------------------------------------------
    def check(self) -> None:
        """Build each recipe's environment once and check it can run this plan.

        Raises:
            ValueError: naming the field, if a recipe's trainer lacks an intervention or a
                stabilizer, its env kwargs are rejected, or ``onset + horizon`` exceeds its
                ``max_steps``.
        """
        wanted = [g.name for g in self.interventions]
        for i, recipe in enumerate(self.recipes):
            where = f"recipes[{i}] ({recipe.env})"
            try:
                env = recipe.make_env(None)
            except (TypeError, ValueError, FileNotFoundError) as error:
                raise ValueError(f"{where}.env_kwargs: {error}") from None
            supported = [x.name for x in env.action_spec.interventions]
            trainer = type(env.trainer).__name__
            for field, names in (
                ("interventions", wanted),
                ("stabilizers", [s.name for s in recipe.stabilizers]),
            ):
                missing = [n for n in names if n not in supported]
                if missing:
                    raise ValueError(
                        f"{where}: {field} {missing} not supported by its trainer {trainer}; "
                        f"supported: {supported}"
                    )
            last = max(self.onsets) + self.horizon
            if last > env.max_steps:
                raise ValueError(
                    f"onsets/horizon: the last onset + horizon = {last} steps exceeds "
                    f"{where}'s max_steps = {env.max_steps}; lower them or set "
                    f"env_kwargs.max_steps >= {last}"
                )

    @property
    def n_runs(self) -> int:
        """Runs in the plan: per recipe, seed and onset, one unperturbed + the perturbed."""
        perturbed = sum(len(g.magnitudes) for g in self.interventions)
        return len(self.recipes) * len(self.seeds) * len(self.onsets) * (1 + perturbed)

    def resolved_workers(self, backend: str | None = None) -> int:
        """The plan's workers, else 1 for the ``population`` backend (a population fills a
        core by itself, and each worker process costs seconds to start: measured, in this
        process digits_quick ran in 3 s, with two workers in 11 s), else the CPU count."""
        if self.workers:
            return self.workers
        return 1 if backend == "population" else os.cpu_count() or 1

    def resolved_backend(self, backend: str | None = None) -> str:
        """The backend that runs: ``backend`` (else the plan's), with ``auto`` resolved;
        ``ValueError`` for ``population`` where a recipe's env has no population form."""
        name = backend or self.backend
        populations = all(r.has_population() for r in self.recipes)
        if name == "auto":
            return "population" if populations else "process"
        if name == "population" and not populations:
            missing = [r.name for r in self.recipes if not r.has_population()]
            raise ValueError(
                f"backend 'population' needs envs with a population form; recipes {missing} "
                "have none (their env has no vector entry point, or its population does not "
                "take their settings; use backend 'process')"
            )
        return name


def _held_knobs() -> list[Intervention]:
    return [i for i in registry.all_interventions() if i.knob is not None]


def default_plan() -> AuditPlan:
    """``trainenv audit`` without a plan: CartPole PPO across the four dimensions.

    5 seeds x (1 unperturbed + 12 perturbed) runs, perturbed after 40 steps (PPO has learned about a
    third of CartPole there) and compared for 20 steps: about 1,500 env steps (one PPO
    rollout and update each), a few minutes on 2 cores. The tolerance is wide (0.2 of the
    return range) because an RL run and its fork drift apart on their own once any
    perturbation changes one action.
    """
    return AuditPlan(
        recipes=(Recipe(env=DEFAULT_ENV),),
        interventions=(
            InterventionGrid(name="lr_shock", magnitudes=(10.0, 100.0, 1000.0)),
            InterventionGrid(name="input_noise", magnitudes=(0.3, 1.0, 3.0)),
            InterventionGrid(name="weight_noise", magnitudes=(0.3, 1.0, 3.0)),
            InterventionGrid(name="reward_flip", magnitudes=(0.1, 0.3, 1.0)),
        ),
        onsets=(40,),
        horizon=20,
        seeds=(0, 1, 2, 3, 4),
        tolerance=0.2,
    )
