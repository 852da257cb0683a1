"""The results store: Parquet tables of finished runs, written in atomic batches.

Layout under the output directory::

    plan.yaml               the plan of the latest audit written here
    .lock                   locked (``flock``) by the process writing here; holds its pid
    runs/<batch>.parquet    one row per run of the batch: its plan keys and metrics
    steps/<batch>.parquet   one row per step of the same batch's runs
    corrupt/                files that did not read back, moved aside when a writer started

Each folder is a Parquet dataset that pandas, pyarrow, DuckDB and polars read directly: every
column has one declared Arrow type (:data:`RUNS_SCHEMA`, :data:`STEPS_SCHEMA`, and ``float64``
for the ``knob.*`` and ``telemetry.*`` families), and every file of a folder has the same
schema, the declared columns its writer produces.

A run is finished iff it is in a ``runs/`` file that reads back. A batch's ``steps/`` file is
written first, then its ``runs/`` file (the commit), each to a temporary name unique to the
writer (pid and random), fsynced and moved into place with ``os.replace`` (atomic on POSIX and
Windows). Run ids are hashes of the plan keys, so a rerun skips what is there and writes
nothing twice. One process writes into a folder at a time (:class:`StoreLocked` otherwise);
on start it removes temporary files of dead writers and steps files without their runs file,
and moves aside files that do not read back, so their runs are redone.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RUNS, STEPS, CORRUPT, LOCK = "runs", "steps", "corrupt", ".lock"
_TMP_SUFFIX = ".tmp"

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
RUNS_SCHEMA = pa.schema([
    # keys: audits (runner), controller evaluations (agents.evaluate), claim-3 traces (findings)
    ("run_id", _S), ("kind", _S), ("status", _S), ("recipe", _S), ("env", _S),
    ("env_kwargs", _S), ("stabilizers", _S), ("paradigm", _S), ("controller", _S),
    ("controller_index", _I), ("distribution", _S), ("schedule", _S), ("seed", _I),
    ("schedule_seed", _I), ("onset", _I), ("horizon", _I), ("tolerance", _F),
    # the perturbation
    ("intervention", _S), ("dimension", _S), ("log_scale", _B), ("low", _F), ("high", _F),
    ("magnitude", _F), ("applied_magnitude", _F), ("duration", _I),
    # outcomes
    ("collapsed", _B), ("collapse_reason", _S), ("baseline_collapse_reason", _S),
    ("drawdown", _F), ("recovery_time", _F), ("area", _F), ("final_gap", _F),
    ("final_p", _F), ("auc", _F), ("cost", _F), ("interventions", _I), ("steps_run", _I),
    ("wall_s", _F),
])  # fmt: skip
"""Every column a ``runs/`` row may have, with its type (all nullable)."""

STEPS_SCHEMA = pa.schema([
    ("run_id", _S), ("step", _I), ("p", _F), ("performance", _F), ("collapse", _S),
    ("applied", _S), ("updates", _I), ("observation", pa.list_(pa.float32())),
    ("deviation", _F), ("self_deviation", _F),
    # claim-3 traces (trainenv.warning.simulation.traces_frame)
    ("paradigm", _S), ("seed", _I), ("scenario", _S), ("k", _I), ("collapse_onset", _I),
    ("ramp_onset", _I), ("loss", _F), ("grad_norm", _F), ("latents", pa.list_(_F)),
    ("features", pa.list_(_F)), ("channels", _S), ("roles", _S),
])  # fmt: skip
"""Every fixed column a ``steps/`` row may have; ``knob.*`` and ``telemetry.*`` are float64."""

BATCH_RUNS = 1000  # an audit's runs per batch file at most
FLUSH_SECONDS = 30.0  # and the longest a finished run of an audit waits to be written

_SCHEMAS = {RUNS: RUNS_SCHEMA, STEPS: STEPS_SCHEMA}
_FLOAT_FAMILIES = ("knob.", "telemetry.")


class StoreLocked(ValueError):
    """Another process is writing into the results folder."""


@dataclass
class RunRecord:
    """A finished run: its row (plan keys and metrics) and its steps (one dict per step)."""

    row: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.row["run_id"])


class ResultStore:
    """Reads and writes an audit's results under ``root``.

    Reading needs nothing else. Writing: :meth:`prepare` (or ``with store:``) takes the
    folder's lock and tidies it, :meth:`write` buffers runs, and a batch is written once it
    holds ``batch_runs`` runs or its first run is ``flush_seconds`` old (a timer thread), and
    at :meth:`close`. A writer killed with ``kill -9`` loses only the runs in flight and the
    unwritten batch: at most ``batch_runs`` runs, finished in the last ``flush_seconds``.

    Args:
        root: The output directory.
        batch_runs: Runs per batch file at most (>= 1; the default 1 writes each run at once).
        flush_seconds: Longest time a finished run waits in memory (>= 0).
    """

    def __init__(self, root: str | Path, batch_runs: int = 1, flush_seconds: float = 30.0) -> None:
        if isinstance(batch_runs, bool) or not isinstance(batch_runs, int) or batch_runs < 1:
            raise ValueError(f"batch_runs must be an integer >= 1, got {batch_runs!r}")
        if not flush_seconds >= 0:
            raise ValueError(f"flush_seconds must be >= 0, got {flush_seconds!r}")
        self.root = Path(root)
        self.batch_runs, self.flush_seconds = batch_runs, float(flush_seconds)
        self._lock_file: IO[str] | None = None
        self._buffer: list[RunRecord] = []
        self._mutex = threading.Lock()  # the buffer and the files, between writer and timer
        self._timer: threading.Timer | None = None
        self._schemas: dict[str, pa.Schema] = {}

    # -- writing ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Lock the folder for this process and tidy it: create the layout, remove temporary
        files of dead writers and steps files without their runs file, move aside files that do
        not read back (their runs are redone), and give every file of a folder one schema.

        Raises:
            StoreLocked: Another live process writes here (its pid is in the message).
        """
        if self._lock_file is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock(self.root / LOCK)
        for sub in (RUNS, STEPS):
            (self.root / sub).mkdir(exist_ok=True)
            for leftover in (self.root / sub).glob(f".*{_TMP_SUFFIX}"):
                if not _pid_alive(_writer_pid(leftover)):
                    leftover.unlink(missing_ok=True)
        for runs_file in self._files(RUNS):
            problem = _unreadable(runs_file) or _unreadable(self.root / STEPS / runs_file.name)
            if problem:
                self._move_aside(runs_file.name, problem)
        committed = {p.name for p in self._files(RUNS)}
        for orphan in self._files(STEPS):
            if orphan.name not in committed:  # killed between the steps and the runs file
                orphan.unlink()
        for sub in (RUNS, STEPS):
            self._schemas[sub] = self._unify(sub)

    def write(self, record: RunRecord) -> None:
        """Add a finished run to the current batch (written when due, see the class)."""
        if self._lock_file is None:
            self.prepare()
        _check_columns(RUNS, record.row.keys())
        _check_columns(STEPS, {c for step in record.steps for c in step})
        with self._mutex:
            self._buffer.append(record)
            due = len(self._buffer) >= self.batch_runs or self.flush_seconds == 0
            if due:
                self._flush_locked()
            elif self._timer is None:
                self._timer = threading.Timer(self.flush_seconds, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write the buffered runs as one batch (nothing if none)."""
        with self._mutex:
            self._flush_locked()

    def close(self) -> None:
        """Write the buffered runs and release the folder."""
        self.flush()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> ResultStore:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def finished(self) -> set[str]:
        """Ids of the runs whose results are complete (in a ``runs/`` file that reads back)."""
        return {r for ids in self._batches().values() for r in ids}

    def runs(self) -> pd.DataFrame:
        """All finished runs, one row each, by run id (empty if none)."""
        frame = _read([pq.read_table(p) for p in self._files(RUNS)])
        return frame.sort_values("run_id", ignore_index=True) if len(frame) else frame

    def steps(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The steps of finished runs (all, or those in ``run_ids``), by run id and step."""
        wanted = None if run_ids is None else set(run_ids)
        tables = []
        for name, ids in self._batches().items():
            if wanted is None:
                tables.append(pq.read_table(self.root / STEPS / name))
            elif keep := wanted & ids:
                only = pc.field("run_id").isin(sorted(keep))
                tables.append(pq.read_table(self.root / STEPS / name, filters=only))
        frame = _read(tables)
        return (
            frame.sort_values("run_id", kind="stable", ignore_index=True) if len(frame) else frame
        )

    # -- internals ----------------------------------------------------------------------------
    def _files(self, sub: str) -> list[Path]:
        return sorted((self.root / sub).glob("[!._]*.parquet"))

    def _batches(self) -> dict[str, set[str]]:
        """Batch file name -> the run ids its ``runs/`` file holds."""
        return {
            p.name: set(pq.read_table(p, columns=["run_id"]).column(0).to_pylist())
            for p in self._files(RUNS)
        }

    def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
        steps = [s for r in self._buffer for s in r.steps]
        try:  # steps first, the runs file last: it commits the batch
            self._write_table(STEPS, name, steps)
            self._write_table(RUNS, name, [r.row for r in self._buffer])
        finally:  # whatever stopped us after the commit, the batch must not be written twice
            if (self.root / RUNS / name).exists():
                self._buffer = []

    def _write_table(self, sub: str, name: str, rows: list[dict[str, Any]]) -> None:
        schema = self._schemas.get(sub, pa.schema([]))
        columns = {c for row in rows for c in row}
        if new := columns - set(schema.names):
            schema = _declared(sub, set(schema.names) | new)
            self._widen(sub, schema)
        _atomic_write(pa.Table.from_pylist(rows, schema=schema), self.root / sub / name)

    def _widen(self, sub: str, schema: pa.Schema) -> None:
        """Rewrite the folder's files with ``schema`` (a writer brought new columns)."""
        for path in self._files(sub):
            _atomic_write(_conform(pq.read_table(path), schema), path)
        self._schemas[sub] = schema

    def _unify(self, sub: str) -> pa.Schema:
        """The folder's schema, rewriting any file that differs (a widening cut short)."""
        schemas = [pq.read_schema(p) for p in self._files(sub)]
        if not schemas:
            return pa.schema([])
        names = {n for s in schemas for n in s.names}
        schema = _declared(sub, names, pa.unify_schemas(schemas, promote_options="permissive"))
        if any(not s.equals(schema) for s in schemas):
            self._widen(sub, schema)
        return schema

    def _move_aside(self, name: str, problem: str) -> None:
        corrupt = self.root / CORRUPT
        corrupt.mkdir(exist_ok=True)
        for sub in (RUNS, STEPS):
            path = self.root / sub / name
            if path.exists():
                os.replace(path, corrupt / f"{sub}-{name}")
        print(
            f"trainenv: {self.root / RUNS / name} or its steps do not read back ({problem}); "
            f"moved to {corrupt}/, its runs will be redone",
            file=sys.stderr,
        )


# -- schemas --------------------------------------------------------------------------------
def _column_type(sub: str, name: str) -> pa.DataType | None:
    declared = _SCHEMAS[sub]
    if name in declared.names:
        return declared.field(name).type
    if sub == STEPS and name.startswith(_FLOAT_FAMILIES):
        return pa.float64()
    return None


def _check_columns(sub: str, columns: Iterable[str]) -> None:
    unknown = sorted(c for c in columns if _column_type(sub, c) is None)
    if unknown:
        raise ValueError(
            f"{sub} columns {unknown} are not declared in trainenv.audit.store "
            f"({sub.upper()}_SCHEMA{' or the knob./telemetry. families' if sub == STEPS else ''})"
        )


def _declared(sub: str, names: set[str], found: pa.Schema | None = None) -> pa.Schema:
    """The schema of ``names``: declared columns in declared order, then families by name.
    Columns of old files that were never declared keep the type ``found`` has for them."""
    order = {n: i for i, n in enumerate(_SCHEMAS[sub].names)}
    fields = []
    for name in sorted(names, key=lambda n: (order.get(n, len(order)), n)):
        kind = _column_type(sub, name)
        if kind is None and found is not None:
            kind = found.field(name).type
        fields.append(pa.field(name, kind if kind is not None else pa.null()))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, order and types (missing columns null)."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


# -- files ----------------------------------------------------------------------------------
def _atomic_write(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically: a temporary name of this writer, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` does not read back as Parquet (``None`` if it does)."""
    try:
        data = pq.ParquetFile(path)  # the footer: gone from a truncated or empty file
        data.read(columns=data.schema_arrow.names[:1])  # and one column's pages
    except (OSError, pa.ArrowException, KeyError) as error:
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def _read(tables: list[pa.Table]) -> pd.DataFrame:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _writer_pid(tmp: Path) -> int | None:
    """The pid in a temporary file's name (``.<name>.<pid>.<random>.tmp``), if any."""
    parts = tmp.name.split(".")
    return int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None


def _pid_alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():  # ours are never leftovers at start: a dead pid reused
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _lock(path: Path) -> IO[str]:
    """Take the exclusive lock on ``path`` for this process and write our pid into it."""
    handle = open(path, "a+")  # noqa: SIM115 - held open until close(): it is the lock
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one writer per folder is then up to the user)
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StoreLocked(
            f"out: {path.parent} is in use by another trainenv process (pid {holder}); "
            "wait for it to finish, or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
