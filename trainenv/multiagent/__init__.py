"""PettingZoo versions of trainenv: several agents acting on one training run."""

from trainenv.multiagent.game import PerturbStabilizeEnv

__all__ = ["PerturbStabilizeEnv"]
