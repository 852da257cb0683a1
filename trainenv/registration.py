"""Gymnasium registration of trainenv's environments.

Only specs are recorded (this module imports gymnasium alone), so ``import trainenv`` stays
light; ``gymnasium.make`` imports the factory in :mod:`trainenv.envs` when called. Each spec
also says what its recipe's trainer is and acts through, so ``trainenv list`` and the docs
answer without building a run (a test checks it against the built environments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym

if TYPE_CHECKING:
    from trainenv.core.interventions import Intervention


@dataclass(frozen=True)
class RegisteredEnv:
    """A registered environment, described without building it.

    Attributes:
        entry_point: The factory ``gymnasium.make`` calls, as ``"module:function"``.
        trainer: Class name of the recipe's trainer.
        targets: The knobs and events that trainer declares (``Trainer.targets``): the
            interventions acting through them are the ones the environment supports.
        vector_entry_point: The factory of its population form, which
            ``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``
            calls (``None``: no population form; ``"sync"``/``"async"`` still work).
    """

    entry_point: str
    trainer: str
    targets: tuple[str, ...]
    vector_entry_point: str | None = None

    def interventions(self) -> tuple[Intervention, ...]:
        """The registered interventions the environment offers, in registry order (those
        acting through its targets, and rollback, which the environment itself performs)."""
        from trainenv.core import interventions as registry

        return registry.supported((*self.targets, registry.ROLLBACK_EVENT))


_COMMON = ("lr_scale", "lr_backoff", "grad_clip", "batch_shrink")
_EVENTS = ("optimizer_reset", "weight_noise", "weight_rescale")
_INPUTS = ("input_noise", "input_shift")
_LM = (*_COMMON, "label_noise", "token_corruption", "domain_shift", "sequence_shuffle",
       "loss_scale", "z_loss", "logit_softcap", "dropout", *_EVENTS, "warmup_restart",
       "layer_rescale", "block_reset")  # fmt: skip
REGISTERED = {
    "trainenv/CartPole-PPO-v0": RegisteredEnv(
        "trainenv.envs:make_cartpole_ppo",
        "SB3Trainer",
        (*_COMMON, *_INPUTS, "reward_noise", "reward_scale", "reward_flip", "ent_coef",
         *_EVENTS, "layer_reset"),
        "trainenv.envs:make_cartpole_ppo_vec",
    ),
    "trainenv/Digits-MLP-v0": RegisteredEnv(
        "trainenv.envs:make_digits_mlp",
        "SupervisedTrainer",
        (*_COMMON, *_INPUTS, "label_noise", "grad_noise", "dropout", *_EVENTS, "layer_reset"),
        "trainenv.envs:make_digits_mlp_vec",
    ),
    "trainenv/TinyLM-v0": RegisteredEnv("trainenv.envs:make_tiny_lm", "CausalLMTrainer", _LM),
    "trainenv/SmallLM-v0": RegisteredEnv("trainenv.envs:make_small_lm", "CausalLMTrainer", _LM),
}  # fmt: skip
ENTRY_POINTS = {env_id: spec.entry_point for env_id, spec in REGISTERED.items()}


def register_all() -> None:
    """Register every environment with Gymnasium (idempotent)."""
    for env_id, spec in REGISTERED.items():
        if env_id not in gym.registry:
            gym.register(
                env_id, entry_point=spec.entry_point, vector_entry_point=spec.vector_entry_point
            )
