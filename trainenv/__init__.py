"""trainenv: a deep-learning training run as a Gymnasium environment.

``import trainenv`` registers the environments and nothing more: torch, scikit-learn and the
trainers load on first use of a public name or on ``gymnasium.make``::

    import gymnasium as gym
    import trainenv

    env = gym.make("trainenv/Digits-MLP-v0")
"""

from __future__ import annotations

import importlib
from typing import Any

from trainenv.registration import ENTRY_POINTS, register_all

__version__ = "0.1.0"

_LAZY = {  # public name -> "module" (same name there) or "module:name"
    "TrainEnv": "trainenv.env",
    "PopulationVectorEnv": "trainenv.vector",
    "SB3VecEnv": "trainenv.vector",
    "unbatch_infos": "trainenv.vector",
    "calibrate": "trainenv.calibration",
    "CollapseRule": "trainenv.core.collapse",
    "RewardSpec": "trainenv.core.reward",
    "MetaStateEncoder": "trainenv.core.metastate",
    "ActionSpec": "trainenv.core.actions",
    "ContinuousMagnitudes": "trainenv.core.actions",
    "DiscreteMenu": "trainenv.core.actions",
    "Intervention": "trainenv.core.interventions",
    "Dimension": "trainenv.core.interventions",
    "Role": "trainenv.core.interventions",
    "get_intervention": "trainenv.core.interventions:get",
    "get_perturbation": "trainenv.core.interventions",
    "all_interventions": "trainenv.core.interventions",
}
__all__ = ["ENV_IDS", *_LAZY]
ENV_IDS = tuple(ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, _, attribute = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)
    raise AttributeError(f"module 'trainenv' has no attribute {name!r}")


register_all()
