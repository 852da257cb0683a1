"""Trainers: one module per kind of run, each implementing the :class:`Trainer` protocol."""

from typing import Any

from trainenv.trainers.base import Trainer
from trainenv.trainers.population import DigitsMLPPopulation, PopulationTrainer
from trainenv.trainers.supervised import SupervisedTrainer

__all__ = ["Trainer", "SupervisedTrainer", "CausalLMTrainer", "SB3Trainer"]
__all__ += ["PopulationTrainer", "DigitsMLPPopulation"]


def __getattr__(name: str) -> Any:
    # Lazy: the LM trainer imports transformers (the optional ``lm`` extra, ~1 s to import).
    if name == "CausalLMTrainer":
        from trainenv.trainers.lm import CausalLMTrainer

        return CausalLMTrainer
    # Lazy too: stable-baselines3 takes ~1-2 s to import.
    if name == "SB3Trainer":
        from trainenv.trainers.sb3 import SB3Trainer

        return SB3Trainer
    raise AttributeError(f"module 'trainenv.trainers' has no attribute {name!r}")
