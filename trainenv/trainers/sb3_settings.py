"""What an SB3 trainer is built from: the algorithms it accepts, each algorithm's telemetry
table, facts about known inner environments, the RL knobs, and the validation of the
trainer's constructor arguments (each a ``ValueError`` naming the field)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

from trainenv.core.knobs import KnobSpec
from trainenv.core.telemetry import ChannelSpec
from trainenv.trainers.sb3_learner import clear_cached_tensors
from trainenv.trainers.torch import check_device

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
EXPLAINED_VARIANCE = ChannelSpec(
    "explained_variance",
    "1 - Var(returns - values) / Var(returns)",
    diverges_if_nonfinite=False,
)
# The SB3 logger keys (``train/<key>``) each algorithm records, looked up along the class's
# MRO so that a user's subclass inherits its parent's table.
LOSS_CHANNELS: dict[str, tuple[ChannelSpec, ...]] = {
    "PPO": (
        ChannelSpec("policy_gradient_loss", "clipped surrogate policy loss, mean over minibatches"),
        ChannelSpec("value_loss", "value-function MSE, mean over minibatches"),
        ChannelSpec("entropy_loss", "negative policy entropy, nats, mean over minibatches"),
        ChannelSpec("approx_kl", "approximate KL(old || new policy), nats, last epoch"),
        ChannelSpec("clip_fraction", "fraction of samples with a clipped probability ratio"),
        EXPLAINED_VARIANCE,
        ChannelSpec("loss", "total loss of the last minibatch"),
    ),
    "A2C": (
        ChannelSpec("policy_loss", "policy-gradient loss"),
        ChannelSpec("value_loss", "value-function MSE"),
        ChannelSpec("entropy_loss", "negative policy entropy, nats"),
        EXPLAINED_VARIANCE,
    ),
    "DQN": (ChannelSpec("loss", "Huber TD loss, mean over the update's gradient steps"),),
    "SAC": (
        ChannelSpec("actor_loss", "actor loss, mean over the update's gradient steps"),
        ChannelSpec("critic_loss", "twin-critic TD loss, mean over the update's gradient steps"),
        ChannelSpec("ent_coef", "entropy coefficient in force", role="knob"),
        ChannelSpec("ent_coef_loss", "entropy-coefficient loss (0 with a fixed coefficient)"),
    ),
    "TD3": (
        ChannelSpec("actor_loss", "actor loss, mean over the update's delayed actor steps"),
        ChannelSpec("critic_loss", "twin-critic TD loss, mean over the update's gradient steps"),
    ),
}
COMMON_CHANNELS = (
    ChannelSpec("grad_norm", "global L2 gradient norm before clipping, mean over optimizer steps"),
    ChannelSpec("update_ratio", "L2 norm of the update's weight change over the weight norm"),
    ChannelSpec("weight_norm", "global L2 norm of the trained policy weights"),
    ChannelSpec(
        "episode_return",
        "mean true return of the last perf_episodes episodes",
        role="performance",
    ),
    ChannelSpec("lr", "learning rate of the update's last optimizer step", role="knob"),
)

# Facts about known inner environments. obs_scale, the unit of input_noise and input_shift:
# the std of each observation dimension over the first 60 updates of a CartPole-PPO-v0 run.
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"obs_scale": (0.75, 0.7, 0.08, 0.4)},
}
OWNED_KWARGS = frozenset({"env", "seed", "_init_setup_model"})


def resolve_algorithm(
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
    clear_cached_tensors(model)
    return model


def check_algo_kwargs(
    cls: type[BaseAlgorithm], kwargs: Mapping[str, Any] | None, template: BaseAlgorithm | None
) -> dict[str, Any]:
    """The class's constructor defaults overlaid with ``kwargs`` (empty for an instance)."""
    kwargs = copy.deepcopy(dict(kwargs or {}))
    if template is not None:
        if kwargs:
            raise ValueError("algo_kwargs must be empty when algo is an instance (it is built)")
        return {}
    owned = sorted(OWNED_KWARGS & set(kwargs))
    if owned:
        raise ValueError(f"algo_kwargs must not set {owned}: the trainer owns them")
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(set(params) - OWNED_KWARGS - {"self"})
        raise ValueError(
            f"algo_kwargs has unknown keys {unknown} for {cls.__name__}; allowed: {allowed}"
        )
    defaults = {
        n: p.default
        for n, p in params.items()
        if p.default is not inspect.Parameter.empty and n not in OWNED_KWARGS
    }
    return {**defaults, "policy": "MlpPolicy", "device": "cpu", **kwargs}


def resolve_device(
    device: str | torch.device | None,
    algo_kwargs: Mapping[str, Any] | None,
    template: BaseAlgorithm | None,
) -> torch.device:
    """The run's device: ``device``, else the instance's or ``algo_kwargs["device"]``, else
    the CPU (SB3's ``"auto"``: CUDA where available). ``device`` and the other two must agree.
    """
    stated = template.device if template is not None else (algo_kwargs or {}).get("device")

    def parsed(value: str | torch.device) -> torch.device:
        auto = value == "auto"
        return check_device(("cuda" if torch.cuda.is_available() else "cpu") if auto else value)

    if device is not None and stated is not None and parsed(device) != parsed(stated):
        where = "the instance's device" if template is not None else "algo_kwargs['device']"
        raise ValueError(f"device {device!r} disagrees with {where} {stated!r}")
    return parsed(device if device is not None else stated if stated is not None else "cpu")


def loss_channels_of(cls: type[BaseAlgorithm]) -> tuple[ChannelSpec, ...]:
    for klass in cls.__mro__:
        if klass.__module__.startswith("stable_baselines3") and klass.__name__ in LOSS_CHANNELS:
            return LOSS_CHANNELS[klass.__name__]
    return ()


def check_n_envs(n_envs: int | None, template: BaseAlgorithm | None) -> int:
    if n_envs is None:
        return template.n_envs if template is not None else 1
    n_envs = check_int("n_envs", n_envs)
    if template is not None and n_envs != template.n_envs:
        raise ValueError(
            f"n_envs must equal the instance's n_envs ({template.n_envs}), got {n_envs}"
        )
    return n_envs


def check_performance_range(value: tuple[float, float] | None, env_id: str) -> tuple[float, float]:
    """``value`` (validated by :class:`TrainerSpec`); ``None`` (nothing derivable) is an error."""
    if value is None:
        raise ValueError(
            f"performance_range is required for env_id {env_id!r}: pass (floor, ceiling) of "
            "its episode return (it is known for Gymnasium's classic-control tasks, and derived "
            "where the env's spec has a reward_threshold above a random policy's return)"
        )
    return value


def observation_space_of(env_id: str) -> spaces.Space:
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        raise ValueError(
            f"env_id {env_id!r} is not a registered Gymnasium environment: {error}"
        ) from None
    space = env.observation_space
    env.close()
    return space


def check_obs_scale(value: float | Sequence[float], space: spaces.Space) -> np.ndarray:
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


def check_int(name: str, value: int, high: int | None = None) -> int:
    bad = isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    if bad or (high is not None and value > high):
        allowed = f"in [1, {high}]" if high is not None else ">= 1"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)
