"""Trainers: one module per kind of run, each implementing the :class:`Trainer` protocol.

Everything a user's own trainer needs is exported here: subclass :class:`TorchTrainer` (one
torch module and its optimizer) or :class:`Trainer` (any run), return a :class:`TrainerSpec`
of :class:`ChannelSpec` and :class:`KnobSpec` declarations from ``_declare``, and reuse the
shared knobs (``LR_SCALE``, ``GRAD_CLIP``...) so that the registry's interventions act on the
run. ``examples/custom_trainer.py`` is a complete one.
"""

from typing import Any

from trainenv.core.knobs import (
    BATCH_SHRINK,
    GRAD_CLIP,
    INPUT_NOISE,
    INPUT_SHIFT,
    LABEL_NOISE,
    LR_BACKOFF,
    LR_SCALE,
    KnobSpec,
)
from trainenv.core.telemetry import ChannelSpec, Telemetry
from trainenv.trainers.base import Snapshot, Trainer, TrainerSpec, check_positive_int
from trainenv.trainers.supervised import SupervisedTrainer
from trainenv.trainers.torch import TORCH_EVENTS, TorchTrainer, clip_and_measure, clone_tree

__all__ = [
    "Trainer",
    "TorchTrainer",
    "TrainerSpec",
    "Snapshot",
    "ChannelSpec",
    "Telemetry",
    "KnobSpec",
    "TORCH_EVENTS",
    "LR_SCALE",
    "LR_BACKOFF",
    "GRAD_CLIP",
    "BATCH_SHRINK",
    "INPUT_NOISE",
    "INPUT_SHIFT",
    "LABEL_NOISE",
    "clone_tree",
    "clip_and_measure",
    "check_positive_int",
    "SupervisedTrainer",
    "CausalLMTrainer",
    "SB3Trainer",
]


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
