"""Things that act on trainenv environments: scripted schedules and controllers.

``trainenv`` never imports ``agents``; agents use trainenv's public API only.
"""

from agents.scripted import NoOp, Schedule

__all__ = ["NoOp", "Schedule"]
