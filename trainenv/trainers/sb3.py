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
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from torch.nn.utils import parameters_to_vector

from trainenv.core import knobs as K
from trainenv.core.knobs import KnobSpec
from trainenv.core.rng import perturbation_generator, torch_generator
from trainenv.core.telemetry import ChannelSpec
from trainenv.trainers.base import Trainer, TrainerSpec
from trainenv.trainers.torch import (
    TORCH_EVENTS,
    all_finite,
    apply_parameter_event,
    clip_and_measure,
    reset_first_linear,
)

REWARD_NOISE = KnobSpec(
    "reward_noise", 0.0, 0.0, 1e6, "std of Gaussian noise on the rewards the learner sees"
)
REWARD_SCALE = KnobSpec("reward_scale", 1.0, 0.0, 1e6, "multiplier on the rewards the learner sees")
REWARD_FLIP = KnobSpec(
    "reward_flip", 0.0, 0.0, 1.0, "fraction of the rewards the learner sees with sign flipped"
)

ALGORITHMS = ("A2C", "DDPG", "DQN", "PPO", "SAC", "TD3")
"""Names ``algo`` accepts as a string (classes of ``stable_baselines3``)."""

# Undefined rather than divergent when non-finite (zero-variance returns): carried forward.
_EXPLAINED_VARIANCE = ChannelSpec(
    "explained_variance",
    "1 - Var(returns - values) / Var(returns)",
    diverges_if_nonfinite=False,
)
# The SB3 logger keys (``train/<key>``) each algorithm records, looked up along the class's
# MRO so that a user's subclass inherits its parent's table.
_LOSS_CHANNELS: dict[str, tuple[ChannelSpec, ...]] = {
    "PPO": (
        ChannelSpec("policy_gradient_loss", "clipped surrogate policy loss, mean over minibatches"),
        ChannelSpec("value_loss", "value-function MSE, mean over minibatches"),
        ChannelSpec("entropy_loss", "negative policy entropy, nats, mean over minibatches"),
        ChannelSpec("approx_kl", "approximate KL(old || new policy), nats, last epoch"),
        ChannelSpec("clip_fraction", "fraction of samples with a clipped probability ratio"),
        _EXPLAINED_VARIANCE,
        ChannelSpec("loss", "total loss of the last minibatch"),
    ),
    "A2C": (
        ChannelSpec("policy_loss", "policy-gradient loss"),
        ChannelSpec("value_loss", "value-function MSE"),
        ChannelSpec("entropy_loss", "negative policy entropy, nats"),
        _EXPLAINED_VARIANCE,
    ),
    "DQN": (ChannelSpec("loss", "Huber TD loss, mean over the update's gradient steps"),),
    "SAC": (
        ChannelSpec("actor_loss", "actor loss, mean over the update's gradient steps"),
        ChannelSpec("critic_loss", "twin-critic TD loss, mean over the update's gradient steps"),
        ChannelSpec("ent_coef", "entropy coefficient in force"),
        ChannelSpec("ent_coef_loss", "entropy-coefficient loss (0 with a fixed coefficient)"),
    ),
    "TD3": (
        ChannelSpec("actor_loss", "actor loss, mean over the update's delayed actor steps"),
        ChannelSpec("critic_loss", "twin-critic TD loss, mean over the update's gradient steps"),
    ),
}
_COMMON_CHANNELS = (
    ChannelSpec("grad_norm", "global L2 gradient norm before clipping, mean over optimizer steps"),
    ChannelSpec("update_ratio", "L2 norm of the update's weight change over the weight norm"),
    ChannelSpec("weight_norm", "global L2 norm of the trained policy weights"),
    ChannelSpec("episode_return", "mean true return of the last perf_episodes episodes"),
    ChannelSpec("lr", "learning rate of the update's last optimizer step"),
)

# Facts about known inner environments. obs_scale, the unit of input_noise and input_shift:
# the std of each observation dimension over the first 60 updates of a CartPole-PPO-v0 run.
_ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"performance_range": (0.0, 500.0), "obs_scale": (0.75, 0.7, 0.08, 0.4)},
}
_OWNED_KWARGS = frozenset({"env", "seed", "_init_setup_model"})


class SB3Trainer(Trainer):
    """A stable-baselines3 algorithm learning a Gymnasium environment.

    Telemetry: the algorithm's own logged losses (a declared table per algorithm: PPO, A2C,
    DQN, SAC, TD3 and their subclasses; values averaged over the update's ``train()`` calls),
    then ``grad_norm``, ``update_ratio``, ``weight_norm``, ``episode_return`` and ``lr``. A
    value the update did not produce (no gradient step yet, e.g. before ``learning_starts``)
    carries the previous one forward (0 at first). Performance is the mean *true* return of the
    last ``perf_episodes`` finished episodes (the floor of ``performance_range`` before any).

    Knobs, declared per algorithm: ``lr_scale``, ``lr_backoff`` (multiply the recipe's
    schedule), ``grad_clip`` (the trainer clips every optimizer step; default: the algorithm's
    ``max_grad_norm``, inf if it has none), ``batch_shrink`` (algorithms with a
    ``batch_size``), ``input_noise`` and ``input_shift`` (float ``Box`` observations: Gaussian
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
        performance_range: ``(floor, ceiling)`` of the episode return; known for
            ``CartPole-v1`` (0, 500), required for other environments.
        obs_scale: Unit of ``input_noise`` and ``input_shift``, per observation dimension or one
            number; default known for ``CartPole-v1``, 1 (raw observation units) otherwise.
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
    ) -> None:
        self.algo_class, self._template = _algorithm(algo)
        self.env_id = env_id
        self.algo_kwargs = _algo_kwargs(self.algo_class, algo_kwargs, self._template)
        self.n_envs = _n_envs(n_envs, self._template)
        self.perf_episodes = _check_int("perf_episodes", perf_episodes, high=100)
        defaults = _ENV_DEFAULTS.get(env_id, {})
        self._performance_range = _performance_range(
            performance_range or defaults.get("performance_range"), env_id
        )
        observation_space = _observation_space(env_id)
        self._perturbable_obs = isinstance(observation_space, spaces.Box) and np.issubdtype(
            observation_space.dtype, np.floating
        )
        self.obs_scale = _obs_scale(
            obs_scale if obs_scale is not None else defaults.get("obs_scale", 1.0),
            observation_space,
        )
        self.steps_per_update = self._steps_per_update(steps_per_update)
        self._batch_size: int | None = self._setting("batch_size")
        self._loss_channels = _loss_channels(self.algo_class)
        self.model: BaseAlgorithm | None = None
        self._failed = False  # the latest update raised an error that non-finite numbers caused
        super().__init__()
        self._last_row = np.zeros(len(self.channels))

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(
            channels=self._loss_channels + _COMMON_CHANNELS,
            knobs=self._declare_knobs(),
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
        env = _LearnerView(self._make_vec_env(), self.obs_scale, direction)
        if self._template is None:
            # SB3 writes into some of its arguments (policy_kwargs): give it a copy.
            kwargs = copy.deepcopy(self.algo_kwargs)
            model = self.algo_class(kwargs.pop("policy"), env, seed=seed, **kwargs)
        else:
            model = copy.deepcopy(self._template)
            model.set_env(env)
            model.set_random_seed(seed)
        model.set_logger(_UpdateLogger())
        model.lr_schedule = _ScaledSchedule(model.lr_schedule)
        model.trainenv_monitor = _GradMonitor()  # type: ignore[attr-defined]
        if hasattr(model, "max_grad_norm"):
            model.max_grad_norm = math.inf  # the trainer's own hook clips (the grad_clip knob)
        self.model = model
        self._last_row = np.zeros(len(self.channels))

    def evaluate(self) -> float:
        buffer = self.model.ep_info_buffer if self.model is not None else None
        if not buffer:
            return self.performance_range[0]
        recent = itertools.islice(reversed(buffer), self.perf_episodes)
        return float(np.mean([episode["r"] for episode in recent]))

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
            apply_parameter_event(name, magnitude, _optimizers(model), _weights(model), rng)

    def _shared(self) -> Iterable[object]:
        # The instance template is only ever copied from, never changed.
        return () if self._template is None else (self._template,)

    # -- one update ---------------------------------------------------------------------------
    def _update(self, number: int) -> np.ndarray:
        """One ``learn`` call; returns its telemetry row."""
        model = self._model()
        view = self._configure(model)
        weights = _weights(model)
        before = parameters_to_vector(weights).detach()
        self._failed = False
        try:
            # log_interval=None: never dump (SB3 checks for None; its annotation says int).
            model.learn(self.steps_per_update, reset_num_timesteps=False, log_interval=None)  # type: ignore[arg-type]
        except (ValueError, RuntimeError):
            # Non-finite numbers surface as errors in torch distributions and samplers.
            self._failed = not all_finite(model.policy.parameters()) or _nonfinite_forward(model)
            if not self._failed:
                raise
        finally:
            view.detach()
            _clear_cached_tensors(model)
        return self._row(model, weights, before)

    def _diverged(self, row: np.ndarray) -> bool:
        """Non-finite telemetry or weights, or an error that non-finite numbers caused."""
        return (
            self._failed
            or super()._diverged(row)
            or not all_finite(self._model().policy.parameters())
        )

    def _configure(self, model: BaseAlgorithm) -> _LearnerView:
        """Put the knobs in force on the model for the coming ``learn`` call."""
        knobs = self._knobs
        model.lr_schedule.factor = knobs["lr_scale"] * knobs["lr_backoff"]  # type: ignore[attr-defined]
        monitor: _GradMonitor = model.trainenv_monitor  # type: ignore[attr-defined]
        monitor.max_norm = knobs["grad_clip"]
        monitor.install(_optimizers(model))
        if "batch_shrink" in knobs:
            batch_size = max(1, round(self._batch_size / knobs["batch_shrink"]))  # type: ignore[operator]
            model.batch_size = batch_size  # type: ignore[attr-defined]
        if "ent_coef" in knobs:
            model.ent_coef = knobs["ent_coef"]  # type: ignore[attr-defined]
        view = model.env
        while not isinstance(view, _LearnerView):  # under any wrapper SB3 added (image transpose)
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
        monitor: _GradMonitor = model.trainenv_monitor  # type: ignore[attr-defined]
        if monitor.norms:
            row[n] = float(np.mean(monitor.norms))
            monitor.norms.clear()
        after = parameters_to_vector(weights).detach()
        weight_norm = float(after.norm())
        row[n + 1] = float((after - before).norm()) / max(weight_norm, 1e-12)
        row[n + 2] = weight_norm
        row[n + 3] = self.evaluate()
        schedule: _ScaledSchedule = model.lr_schedule  # type: ignore[assignment]
        if schedule.last is not None:
            row[n + 4] = schedule.last
        self._last_row = row
        return row

    # -- construction -------------------------------------------------------------------------
    def _make_vec_env(self) -> VecEnv:
        # Monitor sits under the learner's view: it records true episode returns.
        return DummyVecEnv([lambda: Monitor(gym.make(self.env_id)) for _ in range(self.n_envs)])

    def _setting(self, name: str) -> Any:
        """The algorithm's setting ``name`` (``None`` if it has none)."""
        if self._template is not None:
            return getattr(self._template, name, None)
        return self.algo_kwargs.get(name)

    def _steps_per_update(self, steps: int | None) -> int:
        if steps is not None:
            return _check_int("steps_per_update", steps)
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


# -- the pieces stored on the model (deep-copied with it) --------------------------------------
class _UpdateLogger(Logger):
    """An SB3 logger that writes nothing and averages repeated ``train/`` records.

    Off-policy algorithms call ``train()`` several times per update; each call records its
    losses, and the average over the update is what the telemetry reports.
    """

    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        numeric = isinstance(value, (int, float, np.number, np.ndarray)) and np.ndim(value) == 0
        if key.startswith("train/") and numeric:
            self.record_mean(key, float(value), exclude)
        else:
            super().record(key, value, exclude)


class _ScaledSchedule:
    """Replaces ``model.lr_schedule``: the recipe's schedule times the trainer's lr knobs.

    Attributes:
        base: The algorithm's own schedule (progress remaining -> learning rate).
        factor: ``lr_scale * lr_backoff``, set by the trainer before each update.
        last: The rate most recently handed to an optimizer (``None`` before any).
    """

    def __init__(self, base: Callable[[float], float]) -> None:
        self.base = base
        self.factor = 1.0
        self.last: float | None = None

    def __call__(self, progress_remaining: float) -> float:
        self.last = float(self.base(progress_remaining)) * self.factor
        return self.last


class _GradMonitor:
    """Clips and measures the gradient at every optimizer step (an optimizer step pre-hook).

    Stored on the model as ``model.trainenv_monitor``, so a deepcopy of the model copies the
    monitor along. torch optimizers drop their hooks when copied, so a copy of the monitor
    starts uninstalled too and hooks the copied optimizers before their next update.

    Attributes:
        max_norm: Clip threshold of the global gradient L2 norm (the ``grad_clip`` knob).
        norms: Pre-clip global norms of the optimizer steps since the last read.
    """

    def __init__(self) -> None:
        self.max_norm = math.inf
        self.norms: list[float] = []
        self._installed = False

    def install(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        if not self._installed:
            for optimizer in optimizers:
                optimizer.register_step_pre_hook(self._before_step)
            self._installed = True

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.norms.append(clip_and_measure(params, self.max_norm))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_installed": False}


class _LearnerView(VecEnvWrapper):
    """The inner environment as the learner sees it: observation and reward perturbations.

    It wraps the ``DummyVecEnv`` of ``Monitor``-ed environments, so the Monitor records true
    returns. The trainer attaches its knobs and perturbation generators for the duration of
    each update only (the model keeps no reference to the trainer); detached, it passes
    everything through.
    """

    def __init__(
        self, venv: VecEnv, obs_scale: np.ndarray, shift_direction: np.ndarray | None
    ) -> None:
        super().__init__(venv)
        self.obs_scale = obs_scale
        self.shift_direction = shift_direction
        self._knobs: Mapping[str, float] = {}
        self._rng: Callable[[str], np.random.Generator] | None = None

    def attach(self, knobs: Mapping[str, float], rng: Callable[[str], np.random.Generator]) -> None:
        self._knobs, self._rng = knobs, rng

    def detach(self) -> None:
        self._knobs, self._rng = {}, None

    def reset(self) -> Any:
        return self._observation(self.venv.reset())

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self._observation(info["terminal_observation"])
        return self._observation(obs), self._reward(rewards), dones, infos

    def _observation(self, obs: Any) -> Any:
        """``obs`` as the learner sees it (the input knobs exist for float ``Box`` spaces only,
        so other observations pass through)."""
        noise, shift = self._knobs.get("input_noise", 0.0), self._knobs.get("input_shift", 0.0)
        if noise > 0:
            draw = self._draw("input_noise").standard_normal(obs.shape)
            obs = obs + (noise * self.obs_scale * draw).astype(obs.dtype)
        if shift > 0:
            assert self.shift_direction is not None  # drawn at reset for float Box spaces
            obs = obs + (shift * self.obs_scale * self.shift_direction).astype(obs.dtype)
        return obs

    def _reward(self, rewards: np.ndarray) -> np.ndarray:
        flip = self._knobs.get("reward_flip", 0.0)
        scale = self._knobs.get("reward_scale", 1.0)
        noise = self._knobs.get("reward_noise", 0.0)
        if flip > 0:
            flipped = self._draw("reward_flip").random(rewards.shape) < flip
            rewards = np.where(flipped, -rewards, rewards)
        if scale != 1.0:
            rewards = rewards * scale
        if noise > 0:
            rewards = rewards + noise * self._draw("reward_noise").standard_normal(rewards.shape)
        return rewards.astype(np.float32)

    # VecEnvWrapper caches its class's members (including a mappingproxy, which cannot be
    # copied); like SB3's VecNormalize, drop the cache when copied and rebuild it.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "class_attributes"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.class_attributes = dict(inspect.getmembers(self.__class__))

    def _draw(self, name: str) -> np.random.Generator:
        assert self._rng is not None, "perturbation knobs are attached with their generators"
        return self._rng(name)


# -- helpers ----------------------------------------------------------------------------------
def _optimizers(model: BaseAlgorithm) -> list[torch.optim.Optimizer]:
    """Every optimizer of the model: the policy's modules' and the algorithm's own (SAC's
    entropy-coefficient optimizer)."""
    found = [getattr(m, "optimizer", None) for m in model.policy.modules()]
    found += list(vars(model).values())
    unique = {id(o): o for o in found if isinstance(o, torch.optim.Optimizer)}
    return list(unique.values())


def _weights(model: BaseAlgorithm) -> list[torch.Tensor]:
    """The policy parameters some optimizer trains (target networks excluded)."""
    trained = {id(p) for o in _optimizers(model) for g in o.param_groups for p in g["params"]}
    return [p for p in model.policy.parameters() if id(p) in trained]


def _clear_cached_tensors(model: BaseAlgorithm) -> None:
    """Drop the distributions policies cache from their last forward pass: they hold non-leaf
    tensors, which ``copy.deepcopy`` refuses (and nothing reads them before the next pass)."""
    for module in model.policy.modules():
        dist = getattr(module, "action_dist", None)
        if dist is not None:
            dist.distribution = None
            if hasattr(dist, "gaussian_actions"):
                dist.gaussian_actions = None


def _nonfinite_forward(model: BaseAlgorithm) -> bool:
    """Whether a forward pass of the policy on its latest observation yields non-finite values
    in any module (finite weights can still overflow)."""
    seen: list[bool] = []

    def check(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not bool(torch.isfinite(output).all()):
            seen.append(True)

    obs = model._last_obs
    if obs is None:  # the error came before any observation: not from the policy's numbers
        return False
    handles = [m.register_forward_hook(check) for m in model.policy.modules()]
    try:
        with torch.no_grad():
            model.policy.predict(obs, deterministic=True)
    except (ValueError, RuntimeError):
        pass  # the hooks have seen what they needed
    finally:
        for handle in handles:
            handle.remove()
    return bool(seen)


def _algorithm(
    algo: str | type[BaseAlgorithm] | BaseAlgorithm,
) -> tuple[type[BaseAlgorithm], BaseAlgorithm | None]:
    """The algorithm class, and a template copy if ``algo`` is an instance."""
    if isinstance(algo, BaseAlgorithm):
        template = copy.deepcopy(_cleared(algo))
        return type(algo), template
    if isinstance(algo, str):
        if algo not in ALGORITHMS:
            raise ValueError(
                f"algo must be one of {ALGORITHMS}, an SB3 class or instance; got {algo!r}"
            )
        return getattr(stable_baselines3, algo), None
    if isinstance(algo, type) and issubclass(algo, BaseAlgorithm):
        return algo, None
    raise ValueError(f"algo must be one of {ALGORITHMS}, an SB3 class or instance; got {algo!r}")


def _cleared(model: BaseAlgorithm) -> BaseAlgorithm:
    _clear_cached_tensors(model)
    return model


def _algo_kwargs(
    cls: type[BaseAlgorithm], kwargs: Mapping[str, Any] | None, template: BaseAlgorithm | None
) -> dict[str, Any]:
    """The class's constructor defaults overlaid with ``kwargs`` (empty for an instance)."""
    kwargs = copy.deepcopy(dict(kwargs or {}))
    if template is not None:
        if kwargs:
            raise ValueError("algo_kwargs must be empty when algo is an instance (it is built)")
        return {}
    owned = sorted(_OWNED_KWARGS & set(kwargs))
    if owned:
        raise ValueError(f"algo_kwargs must not set {owned}: the trainer owns them")
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(set(params) - _OWNED_KWARGS - {"self"})
        raise ValueError(
            f"algo_kwargs has unknown keys {unknown} for {cls.__name__}; allowed: {allowed}"
        )
    defaults = {
        n: p.default
        for n, p in params.items()
        if p.default is not inspect.Parameter.empty and n not in _OWNED_KWARGS
    }
    return {**defaults, "policy": "MlpPolicy", "device": "cpu", **kwargs}


def _loss_channels(cls: type[BaseAlgorithm]) -> tuple[ChannelSpec, ...]:
    for klass in cls.__mro__:
        if klass.__module__.startswith("stable_baselines3") and klass.__name__ in _LOSS_CHANNELS:
            return _LOSS_CHANNELS[klass.__name__]
    return ()


def _n_envs(n_envs: int | None, template: BaseAlgorithm | None) -> int:
    if n_envs is None:
        return template.n_envs if template is not None else 1
    n_envs = _check_int("n_envs", n_envs)
    if template is not None and n_envs != template.n_envs:
        raise ValueError(
            f"n_envs must equal the instance's n_envs ({template.n_envs}), got {n_envs}"
        )
    return n_envs


def _performance_range(value: tuple[float, float] | None, env_id: str) -> tuple[float, float]:
    """``value`` (validated by :class:`TrainerSpec`), required where the env is unknown."""
    if value is None:
        raise ValueError(
            f"performance_range is required for env_id {env_id!r}: pass (floor, ceiling) of "
            f"its episode return (known only for {sorted(_ENV_DEFAULTS)})"
        )
    return value


def _observation_space(env_id: str) -> spaces.Space:
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        raise ValueError(
            f"env_id {env_id!r} is not a registered Gymnasium environment: {error}"
        ) from None
    space = env.observation_space
    env.close()
    return space


def _obs_scale(value: float | Sequence[float], space: spaces.Space) -> np.ndarray:
    """``value`` broadcast to the observation shape (positive and finite)."""
    shape = space.shape if isinstance(space, spaces.Box) else ()
    scale = np.asarray(value, dtype=np.float64)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"obs_scale must be positive and finite, got {value}")
    try:
        return np.broadcast_to(scale, shape).copy()
    except ValueError:
        raise ValueError(
            f"obs_scale must be one number or match the observation shape {shape}"
        ) from None


def _check_int(name: str, value: int, high: int | None = None) -> int:
    bad = isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    if bad or (high is not None and value > high):
        allowed = f"in [1, {high}]" if high is not None else ">= 1"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)
