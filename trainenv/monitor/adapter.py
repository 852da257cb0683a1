"""What every framework adapter does after an update: observe, act if asked, log."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainenv.monitor.actions import Action, Actor, LiveRun, Policy
from trainenv.monitor.log import EventLog
from trainenv.monitor.monitor import Alarm, StabilityMonitor

PREFIX = "monitor/"  # the key prefix of everything the adapters log to the framework


class Watch:
    """The monitor, the optional actor and the optional event log of one run.

    Args:
        monitor: The :class:`StabilityMonitor` fed every update.
        policy: Acts on the run when given (acting is off otherwise); see
            :class:`~trainenv.monitor.actions.Actor` for ``actor_kwargs``.
        log_dir: Folder of the Parquet event table (none written when ``None``).
        run_id: The run's name in that table.
    """

    def __init__(
        self,
        monitor: StabilityMonitor,
        policy: Policy | None = None,
        log_dir: str | Path | None = None,
        run_id: str = "run",
        **actor_kwargs: Any,
    ) -> None:
        self.monitor = monitor
        self.actor = Actor(policy, **actor_kwargs) if policy is not None else None
        self.events = EventLog(log_dir, run_id) if log_dir is not None else None
        self.alarms: list[Alarm] = []

    @property
    def actions(self) -> list[Action]:
        """Every action taken so far (empty when acting is off)."""
        return self.actor.actions if self.actor is not None else []

    def after_update(
        self, row: Mapping[str, float], run: LiveRun
    ) -> tuple[list[Alarm], list[Action], dict[str, float]]:
        """Feed one update's row; the alarms, the actions taken, and what to log to the
        framework (``monitor/...`` keys; empty when there is nothing to report)."""
        alarms = self.monitor.observe(row)
        actions = self.actor.step(run, self.monitor, alarms, row) if self.actor else []
        self.alarms += alarms
        if self.events is not None and (alarms or actions):
            self.events.alarms(alarms, row, self.monitor.deviation,
                               self.monitor.scores.get("self-deviation"))  # fmt: skip
            self.events.actions(actions, row)
        if not (alarms or actions):
            return alarms, actions, {}
        logs = {f"{PREFIX}alarms": float(len(alarms))}
        logs.update({f"{PREFIX}score/{a.detector}": float(a.score) for a in alarms})
        logs.update({f"{PREFIX}action/{a.name}": float(a.magnitude) for a in actions})
        return alarms, actions, logs

    def flush(self) -> Path | None:
        """Write the event table (if any); its path."""
        return self.events.flush() if self.events is not None else None
