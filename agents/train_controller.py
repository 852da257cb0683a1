"""Train a learned controller: stable-baselines3 PPO on a trainenv environment under a hidden
adversary (:mod:`agents.adversary`), on vectorised environments, with TensorBoard logging.

Where the environment has a population form (``gymnasium.make_vec`` with its vector entry
point: CartPole-PPO, Digits-MLP), the ``n_envs`` runs of a PPO batch are the members of one
population trained in one batched computation (:mod:`agents.population_adversary`); otherwise
(or with ``population=False`` / ``--no-population``) one environment per run, in worker
processes. ::

    python -m agents.train_controller trainenv/Digits-MLP-v0 --timesteps 20000 --out runs/ctl
    tensorboard --logdir runs/ctl/tensorboard

writes ``DIR/controller.json`` (the environment, the adversary's distribution and the agent's
action space: everything needed to rebuild the env), ``DIR/policy.json`` and
``DIR/policy.safetensors`` (the PPO model's settings and weights, files that load without
running code: :mod:`agents.controller_files`) and ``DIR/tensorboard/`` (SB3's logs plus
``rollout/collapse_rate``, the share of the latest 100 training episodes that ended in a
collapse). Training draws its runs and schedules from :data:`~agents.adversary.TRAIN_SPLIT`
only. :func:`load_controller` turns the saved model into a controller with the
``reset()``/``act(obs, info)`` protocol of :mod:`agents`.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from pydantic import BaseModel, ConfigDict, Field
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from agents.adversary import (
    TRAIN_SPLIT,
    AdversaryWrapper,
    AgentActions,
    ScheduleDistribution,
    SeedSplit,
    make_adversarial_env,
)
from agents.controller_files import check_plain, load_policy, save_policy
from agents.encoding import encode
from agents.population_adversary import AdversarialPopulation, make_adversarial_population
from trainenv import SB3VecEnv

CONFIG_FILE, TENSORBOARD_DIR = "controller.json", "tensorboard"

PPO_DEFAULTS: dict[str, Any] = {
    "n_steps": 128,
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": 1e-3,
    "gamma": 0.99,
    "ent_coef": 0.01,
    "policy_kwargs": {"net_arch": [64, 64]},
}
"""PPO settings for a controller: short rollouts (``n_steps`` per env, a few episodes of the
registered environments) and a learning rate above SB3's 3e-4, so that a few thousand steps
make many updates (in ``examples/train_controller.py``, 10k steps with these and a menu of 4
actions reached a training collapse rate of 0.14, where 20k steps with ``n_steps=256``,
``learning_rate=3e-4`` and a menu of 8 reached 0.21); a small policy; anything else is SB3's
default."""


class ControllerConfig(BaseModel):
    """Everything that defines a controller's environment; saved as ``controller.json``.

    Attributes:
        env_id: A registered trainenv environment.
        env_kwargs: Passed to ``gymnasium.make`` (not ``action_mode``/``interventions``).
        distribution: The adversary's schedules (``None``: the env's default,
            :meth:`ScheduleDistribution.for_env`).
        agent_actions: ``"discrete"`` menu or ``"continuous"`` box over the stabilizers.
        stabilizers: The agent's stabilizers (``None``: all the run supports).
        levels: Magnitudes per stabilizer on the discrete menu.
        progress: The agent also observes ``p`` and ``best_p``
            (:func:`~agents.adversary.progress_observation`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_id: str
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    distribution: ScheduleDistribution | None = None
    agent_actions: AgentActions = "discrete"
    stabilizers: tuple[str, ...] | None = None
    levels: int = Field(3, ge=1)
    progress: bool = False

    def make_env(self, split: SeedSplit = TRAIN_SPLIT) -> AdversaryWrapper:
        """The adversarial environment, drawing its seeds from ``split``."""
        return make_adversarial_env(
            self.env_id, self.distribution, agent_actions=self.agent_actions,
            stabilizers=self.stabilizers, levels=self.levels, split=split,
            progress=self.progress, **self.env_kwargs,
        )  # fmt: skip

    def has_population(self) -> bool:
        """Whether the environment has a population form (a registered vector entry point)."""
        return gym.spec(self.env_id).vector_entry_point is not None

    def make_population(self, n_envs: int, split: SeedSplit = TRAIN_SPLIT) -> AdversarialPopulation:
        """The adversarial environment as a population of ``n_envs`` members, drawing its
        seeds from ``split`` (needs :meth:`has_population` and an explicit distribution:
        :meth:`resolved`)."""
        if self.distribution is None:
            raise ValueError("distribution: resolve the config first (ControllerConfig.resolved)")
        return make_adversarial_population(
            self.env_id, n_envs, self.distribution, agent_actions=self.agent_actions,
            stabilizers=self.stabilizers, levels=self.levels, split=split,
            progress=self.progress, **self.env_kwargs,
        )  # fmt: skip

    def resolved(self) -> ControllerConfig:
        """This config with the default distribution spelled out (what gets saved)."""
        if self.distribution is not None:
            return self
        return self.model_copy(update={"distribution": self.make_env().distribution})


class _CollapseRate(BaseCallback):
    """Logs ``rollout/collapse_rate``: collapsed share of the latest 100 training episodes."""

    def __init__(self) -> None:
        super().__init__()
        self._ends: deque[bool] = deque(maxlen=100)

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self._ends.append(info.get("collapse") is not None)
        return True

    def _on_rollout_end(self) -> None:
        if self._ends:
            self.logger.record("rollout/collapse_rate", sum(self._ends) / len(self._ends))


def _make_training_env(config: ControllerConfig) -> AdversaryWrapper:
    # Runs in each worker process: one torch thread per environment.
    torch.set_num_threads(1)
    return config.make_env(TRAIN_SPLIT)


def train_controller(
    config: ControllerConfig,
    timesteps: int,
    out: str | Path,
    *,
    n_envs: int = 2,
    seed: int = 0,
    subprocess: bool = True,
    ppo_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
    population: bool | None = None,
) -> PPO:
    """Train a PPO controller on ``config``'s adversarial environment and save it under ``out``.

    Args:
        config: The environment, adversary and action space.
        timesteps: Environment steps of training in total, over all ``n_envs`` environments.
        out: Output directory (``controller.json``, ``policy.json``, ``policy.safetensors``,
            ``tensorboard/``).
        n_envs: Parallel environments.
        seed: Seeds PPO and the environments (env ``i`` gets ``seed + i``).
        subprocess: One process per environment (``SubprocVecEnv``) rather than all in this
            one (``DummyVecEnv``); ignored for a single environment. Worker processes start
            with ``forkserver``, so a calling script needs an ``if __name__ == "__main__":``
            guard.
        ppo_kwargs: Laid over :data:`PPO_DEFAULTS`; plain JSON data (they are saved in
            ``policy.json``).
        progress: Show SB3's progress bar.
        population: Train on the ``n_envs`` members of one population (one batched
            computation; ``subprocess`` is then ignored); ``None``: whenever the environment
            has a population form.
    """
    for name, value in (("timesteps", timesteps), ("n_envs", n_envs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_plain("ppo_kwargs", dict(ppo_kwargs or {}))
    config = config.resolved()  # also builds the env once: a bad config fails here
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    if population is None:
        population = config.has_population()
    venv: VecEnv
    if population:
        # Member i draws its runs and schedules as env i of make_vec_env would (seed + i).
        venv = VecMonitor(SB3VecEnv(config.make_population(n_envs, TRAIN_SPLIT)))
    else:
        vec_cls = SubprocVecEnv if subprocess and n_envs > 1 else DummyVecEnv
        venv = make_vec_env(
            _make_training_env, n_envs=n_envs, seed=seed, vec_env_cls=vec_cls,
            env_kwargs={"config": config},
        )  # fmt: skip
    kwargs = {**PPO_DEFAULTS, **(ppo_kwargs or {})}
    # A minibatch no larger than a rollout (short rollouts in quick runs).
    kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"] * n_envs)
    try:
        model = PPO(
            "MlpPolicy", venv, seed=seed, device="cpu", verbose=0,
            tensorboard_log=str(out / TENSORBOARD_DIR), **kwargs,
        )  # fmt: skip
        model.learn(timesteps, callback=_CollapseRate(), tb_log_name="ppo", progress_bar=progress)
        save_policy(model, out, kwargs)
    finally:
        venv.close()
    return model


class PolicyController:
    """A trained policy in the controller protocol of :mod:`agents` (``reset``, ``act``).

    ``act`` returns an action of the inner env's space (like every controller in
    :mod:`agents`); step an :class:`AdversaryWrapper` with it through ``step_inner``.

    Args:
        model: A stable-baselines3 model trained on an env with ``env``'s action space.
        env: The adversarial environment the controller acts on.
        deterministic: Take the policy's most likely action rather than a sample.
    """

    def __init__(self, model: Any, env: AdversaryWrapper, deterministic: bool = True) -> None:
        if model.action_space != env.action_space:
            raise ValueError(
                f"model: its action space {model.action_space} is not the env's {env.action_space}"
            )
        self.model, self.env, self.deterministic = model, env, deterministic

    def reset(self) -> None:
        """Nothing to forget: the policy is memoryless."""

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return encode(self.env, self.env.agent_spec.decode(action))


def load_config(directory: str | Path) -> ControllerConfig:
    """The :class:`ControllerConfig` saved in a training directory."""
    return ControllerConfig.model_validate_json((Path(directory) / CONFIG_FILE).read_text())


def load_controller(
    directory: str | Path, env: AdversaryWrapper, *, trust_pickle: bool = False
) -> PolicyController:
    """The controller saved in a training directory, acting on ``env``.

    ``trust_pickle``: also load a folder that has only an old pickled ``model.zip``, which can
    run code (see :func:`agents.controller_files.load_policy`); refused otherwise.
    """
    model = load_policy(directory, trust_pickle=trust_pickle)
    if model.observation_space != env.observation_space:
        raise ValueError(
            f"model: its observation space {model.observation_space} is not the env's "
            f"{env.observation_space}"
        )
    return PolicyController(model, env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.train_controller", description=__doc__.splitlines()[0]
    )
    parser.add_argument("env_id", help="a registered trainenv environment")
    parser.add_argument("--timesteps", type=int, required=True, help="environment steps in all")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n-envs", type=int, default=2, help="parallel environments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON object")
    parser.add_argument("--distribution", type=Path, help="JSON file of a ScheduleDistribution")
    parser.add_argument(
        "--agent-actions", choices=["discrete", "continuous", "compound"], default="discrete"
    )
    parser.add_argument("--stabilizers", help="comma-separated (default: all the run supports)")
    parser.add_argument("--levels", type=int, default=3, help="magnitudes per stabilizer")
    parser.add_argument("--progress", action="store_true", help="observe p and best_p too")
    parser.add_argument("--n-steps", type=int, help="PPO rollout length per environment")
    parser.add_argument("--dummy", action="store_true", help="all environments in one process")
    parser.add_argument(
        "--no-population", action="store_true",
        help="one environment per run even where the env has a population form",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    distribution = None
    if args.distribution is not None:
        distribution = ScheduleDistribution.model_validate_json(args.distribution.read_text())
    config = ControllerConfig(
        env_id=args.env_id, env_kwargs=args.env_kwargs, distribution=distribution,
        agent_actions=args.agent_actions, levels=args.levels, progress=args.progress,
        stabilizers=tuple(args.stabilizers.split(",")) if args.stabilizers else None,
    )  # fmt: skip
    ppo_kwargs = {} if args.n_steps is None else {"n_steps": args.n_steps}
    train_controller(
        config, args.timesteps, args.out, n_envs=args.n_envs, seed=args.seed,
        subprocess=not args.dummy, ppo_kwargs=ppo_kwargs,
        population=False if args.no_population else None,
    )  # fmt: skip
    print(f"model: {args.out}\ntensorboard: {args.out / TENSORBOARD_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
