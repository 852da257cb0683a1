"""The pieces an SB3 trainer stores on its stable-baselines3 model (deep-copied with it): the
logger that averages an update's records, the scaled learning-rate schedule, the gradient
clip-and-measure hook, and the learner's view of the inner environment (observation and reward
perturbations); and access to the model's optimizers and trained weights."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from trainenv.trainers.torch import clip_and_measure


class UpdateLogger(Logger):
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


class ScaledSchedule:
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


class GradMonitor:
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


class LearnerView(VecEnvWrapper):
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


def limit_minibatches(buffer: RolloutBuffer, n: int | None) -> None:
    """Make ``buffer.get`` yield at most ``n`` minibatches per call (``None``: all of them).

    While ``batch_shrink`` is in force, an on-policy algorithm's epoch draws only as many
    minibatches as at the recipe's batch size, each from the same shuffled order as always.
    """
    if n is None:
        vars(buffer).pop("get", None)
    else:  # an instance attribute: it is deep-copied with the buffer, and the class is SB3's
        buffer.get = functools.partial(_first_minibatches, buffer, n)  # type: ignore[method-assign]


def _first_minibatches(buffer: RolloutBuffer, n: int, batch_size: int | None = None) -> Any:
    return itertools.islice(type(buffer).get(buffer, batch_size), n)


# -- access to the model's trained parts --------------------------------------------------------
def optimizers(model: BaseAlgorithm) -> list[torch.optim.Optimizer]:
    """Every optimizer of the model: the policy's modules' and the algorithm's own (SAC's
    entropy-coefficient optimizer)."""
    found = [getattr(m, "optimizer", None) for m in model.policy.modules()]
    found += list(vars(model).values())
    unique = {id(o): o for o in found if isinstance(o, torch.optim.Optimizer)}
    return list(unique.values())


def trained_weights(model: BaseAlgorithm) -> list[torch.Tensor]:
    """The policy parameters some optimizer trains (target networks excluded)."""
    trained = {id(p) for o in optimizers(model) for g in o.param_groups for p in g["params"]}
    return [p for p in model.policy.parameters() if id(p) in trained]


def clear_cached_tensors(model: BaseAlgorithm) -> None:
    """Drop the distributions policies cache from their last forward pass: they hold non-leaf
    tensors, which ``copy.deepcopy`` refuses (and nothing reads them before the next pass)."""
    for module in model.policy.modules():
        dist = getattr(module, "action_dist", None)
        if dist is not None:
            dist.distribution = None
            if hasattr(dist, "gaussian_actions"):
                dist.gaussian_actions = None


def nonfinite_forward(model: BaseAlgorithm) -> bool:
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
