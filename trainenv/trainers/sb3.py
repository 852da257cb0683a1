"""A reinforcement-learning run: any stable-baselines3 algorithm on a Gymnasium environment.

One update is one ``model.learn(steps_per_update, reset_num_timesteps=False)`` call: for an
on-policy algorithm (PPO, A2C) by default one rollout of ``n_steps * n_envs`` environment steps
and its training epochs; for an off-policy one (DQN, SAC, TD3) 100 environment steps with the
algorithm's own ``train_freq``/``gradient_steps`` in between. The trainer reaches into SB3 only
through its public surface: the logger (``set_logger``), the learning-rate schedule
(``lr_schedule``), the inner ``VecEnv`` (a wrapper of its own) and the algorithm's settings
(``max_grad_norm``, ``batch_size``, ``ent_coef``), plus torch optimizer step hooks.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch.nn.utils import parameters_to_vector

from trainenv.core import knobs as K
from trainenv.core.knobs import KnobSpec
from trainenv.core.rng import ALL_STREAMS, derive_seed, perturbation_generator, torch_generator
from trainenv.trainers.base import Trainer, TrainerSpec
from trainenv.trainers.sb3_learner import (
    GradMonitor,
    LearnerView,
    ScaledSchedule,
    UpdateLogger,
    clear_cached_tensors,
    limit_minibatches,
    nonfinite_forward,
    optimizers,
    trained_weights,
)
from trainenv.trainers.sb3_returns import performance_range_of
from trainenv.trainers.sb3_settings import (
    ALGORITHMS,
    COMMON_CHANNELS,
    ENV_DEFAULTS,
    REWARD_FLIP,
    REWARD_NOISE,
    REWARD_SCALE,
    check_algo_kwargs,
    check_int,
    check_n_envs,
    check_obs_scale,
    check_performance_range,
    loss_channels_of,
    observation_space_of,
    resolve_algorithm,
    resolve_device,
)
from trainenv.trainers.torch import (
    TORCH_EVENTS,
    all_finite,
    apply_parameter_event,
    device_streams,
    reset_first_linear,
)

__all__ = ["ALGORITHMS", "SB3Trainer"]


class SB3Trainer(Trainer):
    """A stable-baselines3 algorithm learning a Gymnasium environment.

    Telemetry: the algorithm's own logged losses (a declared table per algorithm: PPO, A2C,
    DQN, SAC, TD3 and their subclasses; values averaged over the update's ``train()`` calls),
    then ``grad_norm``, ``update_ratio``, ``weight_norm``, ``episode_return`` and ``lr``. A
    value the update did not produce (no gradient step yet, e.g. before ``learning_starts``)
    carries the previous one forward (0 at first). Performance is the mean *true* return of the
    last ``perf_episodes`` finished episodes: before any has finished it is the floor of
    ``performance_range``, ``info()["episodes"]`` is 0, and the first update that ends with no
    finished episode warns (a ``UserWarning``, once per run).

    Knobs, declared per algorithm: ``lr_scale``, ``lr_backoff`` (multiply the recipe's
    schedule), ``grad_clip`` (the trainer clips every optimizer step; default: the algorithm's
    ``max_grad_norm``, inf if it has none), ``batch_shrink`` (algorithms with a
    ``batch_size``; on-policy ones keep their number of optimizer steps, each on a smaller
    minibatch), ``input_noise`` and ``input_shift`` (float ``Box`` observations: Gaussian
    noise of std ``input_noise * obs_scale``, and an offset ``input_shift * obs_scale`` along a
    ±1 direction fixed per run, on the observations the learner sees), ``reward_noise``,
    ``reward_scale``, ``reward_flip`` (the rewards the learner sees are
    ``reward_scale * (±r) + reward_noise * N(0, 1)``, a ``reward_flip`` fraction of them
    sign-flipped; episode returns and performance stay true returns), and ``ent_coef`` (the
    entropy bonus of on-policy algorithms with a float coefficient: PPO, A2C). Events:
    ``optimizer_reset``, ``weight_noise``, ``weight_rescale``, ``layer_reset`` (the first linear
    layer of the policy), all on the policy weights the optimizers train (not target networks).

    Divergence is data: an update whose telemetry (every channel but ``explained_variance``) or
    weights go non-finite, or that raises a ``ValueError``/``RuntimeError`` while the policy's
    weights or outputs are non-finite (torch distributions reject NaN logits), ends ``advance``
    with ``diverged=True``; any other error propagates.

    SB3 schedules (learning rate, clip range, exploration) see the progress of the current
    ``learn`` call, which with ``reset_num_timesteps=False`` is the fraction
    ``num_timesteps / (num_timesteps + steps_per_update)``: use constant schedules.

    Args:
        algo: An algorithm name from :data:`ALGORITHMS`, an SB3 algorithm class, or an SB3
            instance. For an instance, ``reset(seed)`` starts every run from a copy of the
            instance as it was when the trainer was built (its weights, optimizer state and
            replay buffer), on a fresh inner env built from ``env_id``, with the seed governing
            the environment, action sampling and minibatch order only.
        env_id: Gymnasium id of the inner environment.
        algo_kwargs: Keyword arguments of the algorithm class (not ``env`` or ``seed``, which
            the trainer owns); ``policy`` defaults to ``"MlpPolicy"``, ``device`` to ``"cpu"``.
            Not allowed with an instance.
        n_envs: Parallel inner environments (a ``DummyVecEnv``); default 1, or the instance's.
        steps_per_update: Environment steps per update; default ``n_steps * n_envs`` for
            on-policy algorithms, 100 for off-policy ones.
        perf_episodes: Finished episodes averaged into performance (1 to 100).
        performance_range: ``(floor, ceiling)`` of the episode return; default: the bounds of
            a classic-control task (:data:`~trainenv.trainers.sb3_returns.KNOWN_RETURN_RANGES`),
            else the mean return of a seeded random policy up to the spec's
            ``reward_threshold`` (a ``ValueError`` asks for it where the spec has none).
        obs_scale: Unit of ``input_noise`` and ``input_shift``, per observation dimension or one
            number; default known for ``CartPole-v1``, 1 (raw observation units) otherwise.
        device: Where the policy trains: ``"cpu"`` (default) or ``"cuda"``/``"cuda:N"`` where
            CUDA is available; default: ``algo_kwargs["device"]`` or the instance's, if set.
            On CUDA the run owns the CUDA generators too (action sampling happens there).
        num_threads: Torch threads for the run's work (``None``: the process's setting).
    """

    def __init__(
        self,
        algo: str | type[BaseAlgorithm] | BaseAlgorithm = "PPO",
        env_id: str = "CartPole-v1",
        algo_kwargs: Mapping[str, Any] | None = None,
        n_envs: int | None = None,
        steps_per_update: int | None = None,
        perf_episodes: int = 10,
        performance_range: tuple[float, float] | None = None,
        obs_scale: float | Sequence[float] | None = None,
        *,
        device: str | torch.device | None = None,
        num_threads: int | None = 1,
    ) -> None:
        self.algo_class, self._template = resolve_algorithm(algo)
        self.env_id = env_id
        self.algo_kwargs = check_algo_kwargs(self.algo_class, algo_kwargs, self._template)
        self.device = resolve_device(device, algo_kwargs, self._template)
        if self._template is None:
            self.algo_kwargs["device"] = str(self.device)
        self.n_envs = check_n_envs(n_envs, self._template)
        self.perf_episodes = check_int("perf_episodes", perf_episodes, high=100)
        defaults = ENV_DEFAULTS.get(env_id, {})
        observation_space = observation_space_of(env_id)
        self._performance_range = check_performance_range(
            performance_range_of(env_id, performance_range), env_id
        )
        self._perturbable_obs = isinstance(observation_space, spaces.Box) and np.issubdtype(
            observation_space.dtype, np.floating
        )
        self.obs_scale = check_obs_scale(
            obs_scale if obs_scale is not None else defaults.get("obs_scale", 1.0),
            observation_space,
        )
        self.steps_per_update = self._steps_per_update(steps_per_update)
        self._batch_size: int | None = self._setting("batch_size")
        self._loss_channels = loss_channels_of(self.algo_class)
        self.model: BaseAlgorithm | None = None
        self._failed = False  # the latest update raised an error that non-finite numbers caused
        super().__init__(num_threads=num_threads)
        self._last_row = np.zeros(len(self.channels))

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(
            channels=self._loss_channels + COMMON_CHANNELS,
            knobs=self._declare_knobs(),
            rng_streams=device_streams(ALL_STREAMS, self.device),
            events=TORCH_EVENTS,
            performance_range=self._performance_range,
        )

    # -- protocol -----------------------------------------------------------------------------
    def _reset(self, seed: int) -> None:
        direction = None
        if self._perturbable_obs:
            direction = perturbation_generator(seed, "input_shift_direction").choice(
                [-1.0, 1.0], self.obs_scale.shape
            )
        env = LearnerView(self._make_vec_env(), self.obs_scale, direction)
        # SB3 seeds numpy's global generator (< 2**32) and inner env i with seed + i.
        sb3_seed = derive_seed(seed, "stable_baselines3")
        if self._template is None:
            # SB3 writes into some of its arguments (policy_kwargs): give it a copy.
            kwargs = copy.deepcopy(self.algo_kwargs)
            model = self.algo_class(kwargs.pop("policy"), env, seed=sb3_seed, **kwargs)
        else:
            model = copy.deepcopy(self._template)
            model.set_env(env)
            model.set_random_seed(sb3_seed)
        model.set_logger(UpdateLogger())
        model.lr_schedule = ScaledSchedule(model.lr_schedule)
        model.trainenv_monitor = GradMonitor()  # type: ignore[attr-defined]
        if hasattr(model, "max_grad_norm"):
            model.max_grad_norm = math.inf  # the trainer's own hook clips (the grad_clip knob)
        self.model = model
        self._last_row = np.zeros(len(self.channels))
        self._warned_no_episode = False

    def evaluate(self) -> float:
        buffer = self.model.ep_info_buffer if self.model is not None else None
        if not buffer:
            return self.performance_range[0]
        recent = itertools.islice(reversed(buffer), self.perf_episodes)
        return float(np.mean([episode["r"] for episode in recent]))

    def info(self) -> dict[str, float]:
        """``episodes``: finished episodes in performance (0 to ``perf_episodes``; at 0,
        performance is the floor of ``performance_range``, not a measured return)."""
        buffer = self.model.ep_info_buffer if self.model is not None else None
        return {"episodes": min(len(buffer or ()), self.perf_episodes)}

    def _state(self) -> dict[str, Any]:
        """A deepcopy of the SB3 model (policy, optimizers, inner VecEnv with its Monitor and
        environment state, episode buffer, replay or rollout buffer) and the carried row."""
        return {
            "model": copy.deepcopy(self._model()),
            "last_row": self._last_row.copy(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model = copy.deepcopy(state["model"])
        self._last_row = state["last_row"].copy()

    def _apply_event(self, name: str, magnitude: float) -> None:
        model = self._model()
        rng = self.perturbation_rng(name)
        if name == "layer_reset":
            reset_first_linear(model.policy, magnitude, torch_generator(rng))
        else:
            apply_parameter_event(name, magnitude, optimizers(model), trained_weights(model), rng)

    def _shared(self) -> Iterable[object]:
        # The instance template is only ever copied from, never changed.
        return () if self._template is None else (self._template,)

    # -- one update ---------------------------------------------------------------------------
    def _update(self, number: int) -> np.ndarray:
        """One ``learn`` call; returns its telemetry row."""
        model = self._model()
        view = self._configure(model)
        weights = trained_weights(model)
        before = parameters_to_vector(weights).detach()
        self._failed = False
        try:
            # log_interval=None: never dump (SB3 checks for None; its annotation says int).
            model.learn(self.steps_per_update, reset_num_timesteps=False, log_interval=None)  # type: ignore[arg-type]
        except (ValueError, RuntimeError):
            # Non-finite numbers surface as errors in torch distributions and samplers.
            self._failed = not all_finite(model.policy.parameters()) or nonfinite_forward(model)
            if not self._failed:
                raise
        finally:
            view.detach()
            clear_cached_tensors(model)
        if not model.ep_info_buffer and not self._warned_no_episode:
            self._warn_no_episode(model, number)
        return self._row(model, weights, before)

    def _warn_no_episode(self, model: BaseAlgorithm, number: int) -> None:
        self._warned_no_episode = True
        limit = gym.spec(self.env_id).max_episode_steps
        warnings.warn(
            f"SB3Trainer: no episode of {self.env_id} has finished after {number} update(s) "
            f"({model.num_timesteps} environment steps over {self.n_envs} env(s)); performance "
            f"is the floor {self.performance_range[0]:g} of performance_range until one does "
            f"(info['episodes'] counts them). An episode lasts up to {limit} steps per env; "
            f"an update is {self.steps_per_update} steps.",
            UserWarning,
            stacklevel=2,
        )

    def _diverged(self, row: np.ndarray) -> bool:
        """Non-finite telemetry or weights, or an error that non-finite numbers caused."""
        return (
            self._failed
            or super()._diverged(row)
            or not all_finite(self._model().policy.parameters())
        )

    def _configure(self, model: BaseAlgorithm) -> LearnerView:
        """Put the knobs in force on the model for the coming ``learn`` call."""
        knobs = self._knobs
        model.lr_schedule.factor = knobs["lr_scale"] * knobs["lr_backoff"]  # type: ignore[attr-defined]
        monitor: GradMonitor = model.trainenv_monitor  # type: ignore[attr-defined]
        monitor.max_norm = knobs["grad_clip"]
        monitor.install(optimizers(model))
        if "batch_shrink" in knobs:
            assert self._batch_size is not None  # the knob is declared only with a batch size
            batch_size = max(1, round(self._batch_size / knobs["batch_shrink"]))
            model.batch_size = batch_size  # type: ignore[attr-defined]
            if isinstance(model, OnPolicyAlgorithm):
                # Each epoch takes as many (smaller) minibatches as the recipe's batch size
                # gives: the perturbation changes the signal, not the number of steps.
                cap = None if batch_size == self._batch_size else self._minibatches(model)
                limit_minibatches(model.rollout_buffer, cap)
        if "ent_coef" in knobs:
            model.ent_coef = knobs["ent_coef"]  # type: ignore[attr-defined]
        view = model.env
        while not isinstance(view, LearnerView):  # under any wrapper SB3 added (image transpose)
            view = view.venv  # type: ignore[union-attr]
        view.attach(knobs, self.perturbation_rng)
        return view

    def _row(
        self, model: BaseAlgorithm, weights: list[torch.Tensor], before: torch.Tensor
    ) -> np.ndarray:
        logged = model.logger.name_to_value
        row = self._last_row.copy()
        for i, channel in enumerate(self._loss_channels):
            value = logged.get(f"train/{channel.name}")
            # A non-finite value of a channel that is not a divergence signal is undefined:
            # the previous one is carried forward.
            if value is not None and (channel.diverges_if_nonfinite or np.isfinite(value)):
                row[i] = float(value)
        model.logger.dump()  # clears the values for the next update
        n = len(self._loss_channels)
        monitor: GradMonitor = model.trainenv_monitor  # type: ignore[attr-defined]
        if monitor.norms:
            row[n] = float(np.mean(monitor.norms))
            monitor.norms.clear()
        after = parameters_to_vector(weights).detach()
        weight_norm = float(after.norm())
        row[n + 1] = float((after - before).norm()) / max(weight_norm, 1e-12)
        row[n + 2] = weight_norm
        row[n + 3] = self.evaluate()
        schedule: ScaledSchedule = model.lr_schedule  # type: ignore[assignment]
        if schedule.last is not None:
            row[n + 4] = schedule.last
        self._last_row = row
        return row

    # -- construction -------------------------------------------------------------------------
    def _make_vec_env(self) -> VecEnv:
        # Monitor sits under the learner's view: it records true episode returns.
        return DummyVecEnv([lambda: Monitor(gym.make(self.env_id)) for _ in range(self.n_envs)])

    def _minibatches(self, model: OnPolicyAlgorithm) -> int:
        """Minibatches per epoch at the recipe's batch size."""
        samples = model.rollout_buffer.buffer_size * model.rollout_buffer.n_envs
        return math.ceil(samples / self._batch_size)  # type: ignore[operator]

    def _setting(self, name: str) -> Any:
        """The algorithm's setting ``name`` (``None`` if it has none)."""
        if self._template is not None:
            return getattr(self._template, name, None)
        return self.algo_kwargs.get(name)

    def _steps_per_update(self, steps: int | None) -> int:
        if steps is not None:
            return check_int("steps_per_update", steps)
        if issubclass(self.algo_class, OnPolicyAlgorithm):
            return int(self._setting("n_steps")) * self.n_envs
        return 100

    def _declare_knobs(self) -> tuple[KnobSpec, ...]:
        max_grad_norm = self._setting("max_grad_norm")
        clip = math.inf if max_grad_norm is None else float(max_grad_norm)
        specs = [K.LR_SCALE, K.LR_BACKOFF, dataclasses.replace(K.GRAD_CLIP, default=clip)]
        if self._batch_size is not None:
            specs.append(K.BATCH_SHRINK)
        if self._perturbable_obs:
            unit = "in units of obs_scale per observation dimension"
            specs += [
                dataclasses.replace(K.INPUT_NOISE, description=f"std of observation noise, {unit}"),
                dataclasses.replace(K.INPUT_SHIFT, description=f"offset on observations, {unit}"),
            ]
        specs += [REWARD_NOISE, REWARD_SCALE, REWARD_FLIP]
        ent_coef = self._setting("ent_coef")
        if issubclass(self.algo_class, OnPolicyAlgorithm) and isinstance(ent_coef, (int, float)):
            specs.append(
                KnobSpec("ent_coef", float(ent_coef), 0.0, 1e3,
                         "policy entropy bonus coefficient (controlled stochasticity)")
            )  # fmt: skip
        return tuple(specs)

    def _model(self) -> BaseAlgorithm:
        if self.model is None:
            raise RuntimeError("call reset(seed) first")
        return self.model
