"""Things that act on trainenv environments: scripted schedules and controllers.

Every controller has ``reset()`` (call after ``env.reset``) and ``act(obs, info) -> action``.
``trainenv`` never imports ``agents``; agents use trainenv's public API only.
"""

from agents.encoding import encode
from agents.rules import BackoffOnLossSpike, ClipOnGradSpike, ForkSearch, RollbackOnDrop
from agents.scripted import NoOp, Schedule

__all__ = [
    "BackoffOnLossSpike", "ClipOnGradSpike", "ForkSearch", "NoOp", "RollbackOnDrop", "Schedule",
    "encode",
]  # fmt: skip
