"""The results store: one Parquet file per finished run, written atomically.

Layout under the output directory::

    plan.yaml                 the plan of the latest audit written here
    steps/<run_id>.parquet    one row per step of the run
    runs/<run_id>.parquet     one row: the run's plan keys and metrics

A run counts as finished once its ``runs/`` file exists. Each file is written to a hidden
temporary name and moved into place with ``os.replace`` (atomic on POSIX and Windows), the
steps before the run row, so a run killed in flight leaves no ``runs/`` file and is redone;
its leftovers are overwritten or removed. Run ids are hashes of the plan keys, so a rerun
skips what is there and writes nothing twice. Readers concatenate the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

RUNS, STEPS = "runs", "steps"
_TMP_SUFFIX = ".tmp"


@dataclass
class RunRecord:
    """A finished run: its row (plan keys and metrics) and its steps (one dict per step)."""

    row: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.row["run_id"])


class ResultStore:
    """Reads and writes an audit's results under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        """Create the layout and remove temporary files left by a killed audit."""
        for sub in (RUNS, STEPS):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            for leftover in (self.root / sub).glob(f".*{_TMP_SUFFIX}"):
                leftover.unlink()

    def finished(self) -> set[str]:
        """Ids of the runs whose results are complete."""
        return {p.stem for p in self._files(RUNS)}

    def write(self, record: RunRecord) -> None:
        """Write a run's steps, then its row, each atomically."""
        self._write(STEPS, record.run_id, pd.DataFrame(record.steps))
        self._write(RUNS, record.run_id, pd.DataFrame([record.row]))

    def runs(self) -> pd.DataFrame:
        """All finished runs, one row each (empty if none)."""
        return _concat(pd.read_parquet(p) for p in self._files(RUNS))

    def steps(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The steps of finished runs (all, or those in ``run_ids``)."""
        finished = self.finished()
        wanted = finished if run_ids is None else finished & set(run_ids)
        return _concat(pd.read_parquet(self.root / STEPS / f"{r}.parquet") for r in sorted(wanted))

    def _files(self, sub: str) -> list[Path]:
        return sorted((self.root / sub).glob("[!.]*.parquet"))

    def _write(self, sub: str, run_id: str, frame: pd.DataFrame) -> None:
        final = self.root / sub / f"{run_id}.parquet"
        tmp = final.with_name(f".{final.name}{_TMP_SUFFIX}")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, final)


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
