"""The registered environments: a recipe (trainer + env settings) per id.

Registration records specs only; a trainer is built when ``gymnasium.make`` calls a factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainenv.core.collapse import CollapseRule
from trainenv.env import TrainEnv
from trainenv.trainers.base import Trainer

if TYPE_CHECKING:
    from trainenv.trainers.population import PopulationTrainer
    from trainenv.vector import PopulationVectorEnv

ENCODER_DIR = Path(__file__).parent / "data" / "encoders"


def encoder_path(env_id: str) -> Path:
    """Where the shipped encoder of a registered environment lives (``trainenv calibrate``
    writes it there)."""
    return ENCODER_DIR / f"{env_id.split('/')[-1]}.npz"


def _env_kwargs(
    env_id: str, defaults: dict[str, Any], env_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The env keywords of ``env_id``: its defaults, the caller's, and its shipped encoder."""
    kwargs = {**defaults, **env_kwargs}
    if kwargs.get("observation", "metastate") == "metastate" and kwargs.get("encoder") is None:
        path = encoder_path(env_id)
        if not path.exists():
            raise FileNotFoundError(
                f"no fitted encoder for {env_id} at {path}; run `trainenv calibrate {env_id}` "
                "or pass observation='telemetry'"
            )
        kwargs["encoder"] = path
    return kwargs


def _make(
    env_id: str, trainer: Trainer, defaults: dict[str, Any], env_kwargs: dict[str, Any]
) -> TrainEnv:
    return TrainEnv(trainer, **_env_kwargs(env_id, defaults, env_kwargs))


def _make_vec(
    env_id: str,
    population: PopulationTrainer,
    defaults: dict[str, Any],
    env_kwargs: dict[str, Any],
) -> PopulationVectorEnv:
    from trainenv.vector import PopulationVectorEnv

    return PopulationVectorEnv(population, **_env_kwargs(env_id, defaults, env_kwargs))


_DIGITS_DEFAULTS: dict[str, Any] = {
    "k": 10, "max_steps": 50, "collapse": CollapseRule(drop=0.5, patience=3),
}  # fmt: skip


def make_digits_mlp(trainer_kwargs: dict[str, Any] | None = None, **env_kwargs: Any) -> TrainEnv:
    """``trainenv/Digits-MLP-v0``: an MLP on scikit-learn's digits, 10 updates a step."""
    from trainenv.trainers.supervised import SupervisedTrainer

    trainer = SupervisedTrainer(**(trainer_kwargs or {}))
    return _make("trainenv/Digits-MLP-v0", trainer, _DIGITS_DEFAULTS, env_kwargs)


def make_digits_mlp_vec(
    num_envs: int, trainer_kwargs: dict[str, Any] | None = None, **env_kwargs: Any
) -> PopulationVectorEnv:
    """``trainenv/Digits-MLP-v0`` as a vector env of ``num_envs`` members
    (:class:`~trainenv.trainers.population.DigitsMLPPopulation`, same recipe and defaults)."""
    from trainenv.trainers.population import DigitsMLPPopulation

    population = DigitsMLPPopulation(num_envs, **(trainer_kwargs or {}))
    return _make_vec("trainenv/Digits-MLP-v0", population, _DIGITS_DEFAULTS, env_kwargs)


def make_tiny_lm(trainer_kwargs: dict[str, Any] | None = None, **env_kwargs: Any) -> TrainEnv:
    """``trainenv/TinyLM-v0``: a tiny GPT-2 on Python's bundled reference prose (no download),
    10 updates a step, 30 steps (300 updates, the trainer's cosine horizon).

    Needs the ``lm`` extra (transformers). Collapse: non-finite training or validation loss,
    or 8 steps in a row (80 updates) with normalised performance below 0.8 of its best. For
    an LM, ``p = 1 - L / ln 256`` (``L`` the validation loss in nats per token), so that means
    the validation loss has climbed back more than a fifth of the way from its best to the
    loss of a uniform guess (~5.55 nats, about an untrained model's) and stayed there: from a
    best of 2.4 nats, above 3.0, where a model that has lost the use of context sits (a
    byte-frequency model scores ~3.3). The patience outlasts any knob intervention (5 steps),
    so a run that recovers once a perturbation ends has not collapsed. The rule arms once the
    loss has been below 4.4 nats (``p >= 0.2``).
    """
    from trainenv.trainers.lm import CausalLMTrainer

    trainer = CausalLMTrainer(**(trainer_kwargs or {}))
    defaults = {"k": 10, "max_steps": 30, "collapse": CollapseRule(drop=0.2, patience=8)}
    return _make("trainenv/TinyLM-v0", trainer, defaults, env_kwargs)


SMALL_LM_RECIPE: dict[str, Any] = {
    "model_config": {"n_layer": 6, "n_embd": 256, "n_head": 8},
    "seq_len": 128,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup": 15,
    "total_updates": 150,
    "eval_every": 5,
}
"""The trainer settings of ``trainenv/SmallLM-v0``: a 6-layer, 256-wide, 8-head byte-level
GPT-2 (4.8M parameters, context 128) on the same corpus as ``TinyLM-v0``; AdamW at a peak of
1e-3 (lower than TinyLM's 3e-3 for the deeper model), 15 warmup updates, cosine horizon 150
updates (the episode), validation every step."""


def make_small_lm(trainer_kwargs: dict[str, Any] | None = None, **env_kwargs: Any) -> TrainEnv:
    """``trainenv/SmallLM-v0``: :data:`SMALL_LM_RECIPE`, for a GPU (``trainer_kwargs=
    {"device": "cuda"}``); 5 updates a step, 30 steps (150 updates, the cosine horizon).

    On a CPU an update takes about 0.65 s of one thread (an episode, minutes). The collapse
    rule is ``TinyLM-v0``'s (the same loss scale). ``trainer_kwargs`` are laid over the recipe
    (``model_config`` key by key). The shipped encoder was fitted on a CPU with
    ``trainenv calibrate trainenv/SmallLM-v0 --seeds 2`` (two reference runs, the fewest that
    give a reference band: 300 updates, 193 s of CPU time, 18 min wall on a 2-core machine
    shared with other jobs).
    """
    from trainenv.trainers.lm import CausalLMTrainer

    kwargs = {**SMALL_LM_RECIPE, **(trainer_kwargs or {})}
    kwargs["model_config"] = {**SMALL_LM_RECIPE["model_config"], **kwargs["model_config"]}
    trainer = CausalLMTrainer(**kwargs)
    defaults = {"k": 5, "max_steps": 30, "collapse": CollapseRule(drop=0.2, patience=8)}
    return _make("trainenv/SmallLM-v0", trainer, defaults, env_kwargs)


CARTPOLE_PPO_RECIPE: dict[str, Any] = {
    "n_steps": 32,
    "batch_size": 256,
    "n_epochs": 20,
    "learning_rate": 1e-3,
    "gamma": 0.98,
    "gae_lambda": 0.8,
}
"""The PPO settings of ``trainenv/CartPole-PPO-v0``: RL Zoo's tuned CartPole-v1 settings
(8 envs x 32 steps per rollout), with constant rather than linearly decaying learning rate and
clip range. Unperturbed runs reach returns of 400-500 within 100 updates (25,600 env steps);
with one env instead, runs fell back to a fifth of their best in 2 of 6 seeds."""
CARTPOLE_PPO_N_ENVS = 8


# Unperturbed PPO runs fall to 26-50 % of their best return for up to 9 updates (measured on 9
# seeds, 100 updates each), so a collapse is a stay below 20 % for 10 updates.
_CARTPOLE_DEFAULTS: dict[str, Any] = {
    "k": 1, "max_steps": 100, "collapse": CollapseRule(drop=0.8, patience=10),
}  # fmt: skip


def make_cartpole_ppo(trainer_kwargs: dict[str, Any] | None = None, **env_kwargs: Any) -> TrainEnv:
    """``trainenv/CartPole-PPO-v0``: PPO on CartPole-v1; a step is one update (256 env steps).

    ``trainer_kwargs`` go to :class:`~trainenv.trainers.sb3.SB3Trainer` (``n_envs`` defaults
    to 8); its ``algo_kwargs`` are laid over :data:`CARTPOLE_PPO_RECIPE`.
    """
    from trainenv.trainers.sb3 import SB3Trainer

    kwargs = {"n_envs": CARTPOLE_PPO_N_ENVS, **(trainer_kwargs or {})}
    kwargs["algo_kwargs"] = {**CARTPOLE_PPO_RECIPE, **kwargs.get("algo_kwargs", {})}
    trainer = SB3Trainer("PPO", "CartPole-v1", **kwargs)
    return _make("trainenv/CartPole-PPO-v0", trainer, _CARTPOLE_DEFAULTS, env_kwargs)


def make_cartpole_ppo_vec(
    num_envs: int, trainer_kwargs: dict[str, Any] | None = None, **env_kwargs: Any
) -> PopulationVectorEnv:
    """``trainenv/CartPole-PPO-v0`` as a vector env of ``num_envs`` members
    (:class:`~trainenv.trainers.population.CartPolePPOPopulation`: the same recipe, batched;
    ``trainer_kwargs``: its ``algo_kwargs``, ``n_envs``, ``perf_episodes``)."""
    from trainenv.trainers.population import CartPolePPOPopulation

    population = CartPolePPOPopulation(num_envs, **(trainer_kwargs or {}))
    return _make_vec("trainenv/CartPole-PPO-v0", population, _CARTPOLE_DEFAULTS, env_kwargs)
