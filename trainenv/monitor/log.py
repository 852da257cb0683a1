"""The monitor's events (alarms and actions) as a Parquet table.

One file per monitored run, ``<folder>/<run_id>.parquet``, rewritten atomically (a temporary
name, then ``os.replace``) at every :meth:`EventLog.flush`, so a reader never sees half a file
and a crash loses at most the events since the last flush. Every file has the declared
:data:`MONITOR_SCHEMA` (one Arrow type per column, all nullable), so the folder reads as one
dataset in pandas, pyarrow, DuckDB and polars, like the audit's ``runs/`` and ``steps/``
tables (:mod:`trainenv.audit.store`)::

    import pandas as pd
    events = pd.read_parquet("runs/monitor")   # one row per alarm or action
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainenv.monitor.actions import Action
from trainenv.monitor.monitor import Alarm

_S, _I, _F = pa.string(), pa.int64(), pa.float64()
MONITOR_SCHEMA = pa.schema([
    ("run_id", _S), ("update", _I), ("kind", _S),  # kind: "alarm" or "action"
    ("detector", _S), ("input", _S), ("score", _F), ("threshold", _F),  # alarms
    ("action", _S), ("magnitude", _F), ("alarms", _S), ("checkpoint_update", _I),  # actions
    ("deviation", _F), ("self_deviation", _F),
    ("telemetry", pa.map_(_S, _F)),  # the update's row: {channel: value}
])  # fmt: skip
"""Every column of the monitor's event table, with its type."""


class EventLog:
    """Collects a run's alarms and actions and writes them to ``folder/<run_id>.parquet``.

    Args:
        folder: Where the run's file goes (created on the first flush).
        run_id: The run's name in the table and the file name (letters, digits, ``-_.``).
    """

    def __init__(self, folder: str | Path, run_id: str) -> None:
        if not run_id or not all(ch.isalnum() or ch in "-_." for ch in run_id):
            raise ValueError(f"run_id must be letters, digits, '-', '_' or '.', got {run_id!r}")
        self.path = Path(folder) / f"{run_id}.parquet"
        self.run_id = run_id
        self.rows: list[dict[str, Any]] = []

    def alarms(
        self, alarms: Iterable[Alarm], row: Mapping[str, float], deviation: float | None,
        self_deviation: float | None,
    ) -> None:  # fmt: skip
        """Record alarms with the update's telemetry and deviation scores."""
        for alarm in alarms:
            self.rows.append({
                "update": alarm.update, "kind": "alarm", "detector": alarm.detector,
                "input": alarm.input, "score": alarm.score, "threshold": alarm.threshold,
                "deviation": deviation, "self_deviation": self_deviation, "telemetry": _pairs(row),
            })  # fmt: skip

    def actions(self, actions: Iterable[Action], row: Mapping[str, float]) -> None:
        """Record actions with the update's telemetry."""
        for action in actions:
            self.rows.append({
                "update": action.update, "kind": "action", "action": action.name,
                "magnitude": action.magnitude, "alarms": ",".join(action.alarms),
                "checkpoint_update": action.detail, "telemetry": _pairs(row),
            })  # fmt: skip

    def flush(self) -> Path:
        """Write every event so far (atomically replacing the previous file); its path."""
        rows = [{"run_id": self.run_id, **row} for row in self.rows]
        columns = {name: [row.get(name) for row in rows] for name in MONITOR_SCHEMA.names}
        table = pa.table(columns, schema=MONITOR_SCHEMA)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)
        return self.path


def _pairs(row: Mapping[str, float]) -> list[tuple[str, float]]:
    return [(str(k), float(v)) for k, v in row.items()]
