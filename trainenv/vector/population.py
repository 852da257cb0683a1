"""``PopulationVectorEnv``: a population of runs as a Gymnasium vector environment.

Sub-environment ``i`` is member ``i`` of a :class:`~trainenv.trainers.population.PopulationTrainer`:
its episodes follow the same per-run logic as :class:`~trainenv.env.TrainEnv`
(:class:`~trainenv.episode.Episode`, acting on the member through :class:`MemberView`), and
one ``step`` advances every member by ``k`` updates in one batched computation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from trainenv.core.actions import Magnitudes
from trainenv.core.collapse import CollapseRule
from trainenv.core.interventions import Intervention
from trainenv.core.knobs import KnobSpec
from trainenv.core.metastate import MetaStateEncoder
from trainenv.core.reward import RewardSpec
from trainenv.core.telemetry import ChannelSpec
from trainenv.episode import ActionMode, Episode, EpisodeSettings, ObservationMode
from trainenv.trainers.population import MemberSnapshot, PopulationTrainer
from trainenv.trainers.population.base import check_seed

VectorStep = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]
_MODES = {**{m.value: m for m in AutoresetMode}, **{m.name.lower(): m for m in AutoresetMode}}


class MemberView:
    """Member ``member`` of ``population`` with the single-run trainer's interface (knobs,
    events, snapshots, performance), less ``advance``: the population advances all members."""

    def __init__(self, population: PopulationTrainer, member: int) -> None:
        self.population, self.member = population, member

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self.population.channels

    @property
    def knob_specs(self) -> tuple[KnobSpec, ...]:
        return self.population.knob_specs

    @property
    def performance_range(self) -> tuple[float, float]:
        return self.population.performance_range

    @property
    def targets(self) -> tuple[str, ...]:
        return self.population.targets

    @property
    def updates(self) -> int:
        """Updates the member has run since its reset."""
        return int(self.population.updates[self.member])

    @property
    def knobs(self) -> Mapping[str, float]:
        """The member's knob values in force (a copy)."""
        return self.population.knobs(self.member)

    def set_knob(self, name: str, value: float) -> None:
        self.population.set_knob(self.member, name, value)

    def reset_knob(self, name: str) -> None:
        self.population.reset_knob(self.member, name)

    def apply_event(self, name: str, magnitude: float) -> None:
        self.population.apply_event(self.member, name, magnitude)

    def snapshot(self) -> MemberSnapshot:
        return self.population.snapshot(self.member)

    def restore(self, snapshot: MemberSnapshot) -> None:
        self.population.restore(self.member, snapshot)

    def evaluate(self) -> float:
        """The member's performance as of its latest evaluation."""
        return float(self.population.evaluate()[self.member])

    def info(self) -> dict[str, float]:
        """Recipe-specific facts for ``info``: populations report none beyond the env's."""
        return {}


class PopulationVectorEnv(VectorEnv):
    """A population of runs as a vector environment: sub-environment ``i`` is member ``i``.

    Each member behaves as :class:`~trainenv.env.TrainEnv` (same keywords, observation and
    action spaces: ``single_observation_space``, ``single_action_space``); one :meth:`step`
    decodes each member's action, applies it to that member only, advances the whole
    population by ``k`` updates in one batched computation, then observes each member.

    ``reset(seed=s)`` gives member ``i`` the run seed ``s + i``, ``reset(seed=[s0, s1, ...])``
    member ``i`` the seed ``s_i`` (``None`` entries, like ``seed=None``, draw a seed from the
    env's generator): member ``i`` with seed ``s`` starts as ``TrainEnv.reset(seed=s)`` of the
    same recipe would (statistically: the batched trainer is another implementation), and
    exactly as member 0 of a population of one. ``options={"reset_mask": mask}`` (a bool array
    of shape ``(N,)``) resets only the masked members.

    Autoreset (``metadata["autoreset_mode"]``): ``"next_step"`` (gymnasium's default): the step
    after a member's episode ends restarts it (its action is ignored; reward 0; the reset
    observation and info) with a run seed drawn from the env's generator, and the other members
    carry on; ``"same_step"``: the member restarts within the step that ended its episode,
    whose last observation and info go to ``info["final_obs"]``/``info["final_info"]``;
    ``"disabled"``: an ended member must be reset with ``reset_mask`` before the next step.

    Infos are gymnasium's vector infos: each key of the single-run ``info`` holds an array
    over members (nested for ``knobs``, ``telemetry``, ``active``), with a ``_key`` mask.

    Args:
        population: The members (reset by this env; its size is ``num_envs``).
        autoreset_mode: See above; an :class:`~gymnasium.vector.AutoresetMode` or its value.
        **: The keywords of :class:`~trainenv.env.TrainEnv`, same meaning.
    """

    def __init__(
        self,
        population: PopulationTrainer,
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
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        if not isinstance(population, PopulationTrainer):
            raise ValueError(
                f"population must be a PopulationTrainer, got {type(population).__name__}"
            )
        key = autoreset_mode.value if isinstance(autoreset_mode, AutoresetMode) else autoreset_mode
        mode = _MODES.get(key)
        if mode is None:
            raise ValueError(
                f"autoreset_mode must be one of {sorted(_MODES)}, got {autoreset_mode!r}"
            )
        self.settings = EpisodeSettings.build(
            population, k=k, max_steps=max_steps, action_mode=action_mode,
            observation=observation, interventions=interventions, levels=levels,
            encoder=encoder, collapse=collapse, reward=reward,
            checkpoint_every=checkpoint_every, deviation_in_obs=deviation_in_obs,
        )  # fmt: skip
        self.population = population
        self.num_envs = population.n_members
        self.metadata = {"autoreset_mode": mode, "render_modes": []}
        self.single_observation_space = self.settings.observation_space
        self.single_action_space = self.settings.action_spec.space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.members = tuple(MemberView(population, i) for i in range(self.num_envs))
        self._episodes = [Episode(self.settings, member) for member in self.members]
        self._obs = np.zeros((self.num_envs, *self.single_observation_space.shape), np.float32)
        self._reset_once = False

    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self.metadata["autoreset_mode"]

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions on offer, in action-spec order."""
        return self.settings.interventions

    @property
    def ended(self) -> np.ndarray:
        """Shape ``(N,)``: members whose episode has ended and not yet restarted."""
        return np.array([not e.started for e in self._episodes])

    def telemetry_window(self, member: int) -> np.ndarray:
        """Member ``member``'s :attr:`TrainEnv.telemetry_window <trainenv.env.TrainEnv.
        telemetry_window>`: the rows its meta-state encodes now, shape ``(W', C)``; a copy."""
        return self._episodes[member].window

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = self._seeds(seed)
        mask = self._reset_mask(options)
        if isinstance(seed, (int, np.integer)):
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        elif any(s is not None for s in seeds):
            # A list of seeds seeds the generator of later autoresets too (reproducible).
            self._np_random = np.random.default_rng([s for s in seeds if s is not None])
            self._np_random_seed = -1
        infos: dict[str, Any] = {}
        for i in np.flatnonzero(mask):
            self._obs[i], info = self._restart(int(i), seeds[i])
            infos = self._add_info(infos, info, int(i))
        self._reset_once = True
        return self._obs.copy(), infos

    def step(self, actions: Any) -> VectorStep:
        """Decode member ``i``'s action ``actions[i]`` (``ValueError`` before any member is
        touched), then step as :meth:`intervene`."""
        pending = self._pending()
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(
                f"actions must have one action per member, shape ({self.num_envs}, ...), "
                f"got shape {actions.shape}"
            )
        decode = self.settings.action_spec.decode
        return self._advance([{} if p else decode(a) for p, a in zip(pending, actions)], pending)

    def intervene(self, interventions: Sequence[Mapping[str, float]]) -> VectorStep:
        """Apply ``interventions[i]`` (``{name: magnitude}``, ``{}`` the no-op; validated before
        any member is touched) to member ``i``, advance every member ``k`` updates, observe.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``, as :meth:`step`.
        """
        pending = self._pending()
        if isinstance(interventions, Mapping) or len(interventions) != self.num_envs:
            raise ValueError(
                f"interventions must be a sequence of {self.num_envs} mappings (one per "
                f"member), got {interventions!r}"
            )
        applied = [self.settings.validated(m) for m in interventions]
        return self._advance([{} if p else a for p, a in zip(pending, applied)], pending)

    def fork_member(self, src: int, dst: int, source: PopulationVectorEnv | None = None) -> None:
        """Slot ``dst`` continues from exactly member ``src``'s state: the run (weights,
        optimizer, inner env, every generator) and the episode (steps, knob schedule,
        checkpoint, telemetry window, collapse and reward memory). Continued with the same
        actions, ``dst`` reproduces ``src``'s continuation.

        ``source``: take member ``src`` of another env of the same recipe and keywords (e.g.
        a smaller population that ran a shared prefix); this env must have been reset.
        """
        if source is None or source is self:
            self.population.copy_member(src, dst)  # validates both indices
            if src == dst:
                return
            origin = self
        else:
            if type(source.population) is not type(self.population):
                raise ValueError(
                    f"source must hold a {type(self.population).__name__}, "
                    f"got {type(source.population).__name__}"
                )
            if not self._reset_once:
                raise RuntimeError("call reset() before fork_member(..., source=...)")
            self.population.restore(dst, source.population.snapshot(src))  # validates both
            origin = source
        self._episodes[dst] = origin._episodes[src].moved_to(self.members[dst])
        self._obs[dst] = origin._obs[src]

    # -- internals ------------------------------------------------------------------------------
    def _advance(self, applied: list[Magnitudes], pending: np.ndarray) -> VectorStep:
        episodes = self._episodes
        costs = [0.0 if p else e.begin_step(a) for e, a, p in zip(episodes, applied, pending)]
        # Members restarting this step are advanced too (one batched call for all); their new
        # run is built afterwards, so it starts as a fresh reset does.
        telemetry = self.population.advance(self.settings.k)
        rewards = np.zeros(self.num_envs)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for i, episode in enumerate(episodes):
            if pending[i]:
                self._obs[i], info = self._restart(i, None)
            else:
                obs, rewards[i], terminations[i], truncations[i], info = episode.end_step(
                    telemetry.member(i), applied[i], costs[i]
                )
                self._obs[i] = obs
                if not episode.started and self.autoreset_mode == AutoresetMode.SAME_STEP:
                    infos = self._add_info(infos, {"final_obs": obs, "final_info": info}, i)
                    self._obs[i], info = self._restart(i, None)
            infos = self._add_info(infos, info, i)
        return self._obs.copy(), rewards, terminations, truncations, infos

    def _restart(self, member: int, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        run_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        self.population.reset_member(member, run_seed)
        return self._episodes[member].start()

    def _pending(self) -> np.ndarray:
        """Members that restart this step (next-step autoreset); errors for a misuse."""
        if not self._reset_once:
            raise RuntimeError("call reset() before step()")
        ended = self.ended
        if ended.any() and self.autoreset_mode == AutoresetMode.DISABLED:
            raise RuntimeError(
                f"members {np.flatnonzero(ended).tolist()} have ended (autoreset disabled): "
                "reset them with reset(options={'reset_mask': mask})"
            )
        return ended

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        n = self.num_envs
        if seed is None:
            return [None] * n
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            check_seed("seed", seed)
            return [int(seed) + i for i in range(n)]
        if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence) or len(seed) != n:
            raise ValueError(
                f"seed must be an integer >= 0, None, or a list of {n} seeds, got {seed!r}"
            )
        return [None if s is None else check_seed(f"seed[{i}]", s) for i, s in enumerate(seed)]

    def _reset_mask(self, options: dict[str, Any] | None) -> np.ndarray:
        options = dict(options or {})
        unknown = sorted(set(options) - {"reset_mask"})
        if unknown:
            raise ValueError(f"options: unknown keys {unknown}; allowed: reset_mask")
        mask = options.get("reset_mask", np.ones(self.num_envs, dtype=bool))
        if (
            not isinstance(mask, np.ndarray)
            or mask.dtype != np.bool_
            or mask.shape != (self.num_envs,)
        ):
            raise ValueError(
                f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                f"got {mask!r}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask'] must select at least one member")
        if not self._reset_once and not mask.all():
            raise ValueError("options['reset_mask']: the first reset must reset every member")
        return mask
