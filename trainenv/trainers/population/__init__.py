"""Populations: N runs of one recipe (its members) trained in one batched computation."""

from typing import Any

from trainenv.trainers.population.base import MemberSnapshot, PopulationTelemetry, PopulationTrainer
from trainenv.trainers.population.mlp import DigitsMLPPopulation

__all__ = [
    "CartPolePPOPopulation",
    "DigitsMLPPopulation",
    "MemberSnapshot",
    "PopulationTelemetry",
    "PopulationTrainer",
]


def __getattr__(name: str) -> Any:
    # Lazy: the PPO recipe shares knob declarations with the stable-baselines3 trainer, and
    # stable-baselines3 takes ~1-2 s to import.
    if name == "CartPolePPOPopulation":
        from trainenv.trainers.population.ppo import CartPolePPOPopulation

        return CartPolePPOPopulation
    raise AttributeError(f"module 'trainenv.trainers.population' has no attribute {name!r}")
