"""Things that act on trainenv environments: scripted schedules and controllers.

Every controller has ``reset()`` (call after ``env.reset``) and ``act(obs, info) -> action``.
Learned controllers: :mod:`agents.train_controller` (training entry point) and
:mod:`agents.evaluate` (the held-out evaluation protocol). ``trainenv`` never imports
``agents``; agents use trainenv's public API only.
"""

from agents.adversary import AdversaryWrapper, ScheduleDistribution, make_adversarial_env
from agents.encoding import encode
from agents.rules import (
    BackoffAndRollbackOnAlarm,
    BackoffOnLossSpike,
    ClipOnGradSpike,
    ForkSearch,
    RollbackOnDrop,
)
from agents.scripted import NoOp, Schedule

__all__ = [
    "AdversaryWrapper", "BackoffAndRollbackOnAlarm", "BackoffOnLossSpike", "ClipOnGradSpike",
    "ForkSearch", "NoOp", "RollbackOnDrop", "Schedule", "ScheduleDistribution", "encode",
    "make_adversarial_env",
]  # fmt: skip
