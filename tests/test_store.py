"""The results store: one schema per table that any Parquet reader takes, atomic batches, one
writer per folder, no stale or corrupt file mistaken for a finished run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from trainenv.audit.runner import run_audit
from trainenv.audit.store import RUNS_SCHEMA, ResultStore, RunRecord, StoreLocked

from .test_audit_runner import tiny_plan


def record(rid: str, collapse: str | None = None, **telemetry: float) -> RunRecord:
    """A run whose optional columns differ between calls (None in one, a string in another)."""
    steps = [
        {"run_id": rid, "step": t, "p": 0.1 * t, "collapse": collapse if t == 2 else None,
         "observation": [0.5, float(t)], **{f"telemetry.{k}": v for k, v in telemetry.items()}}
        for t in range(3)
    ]  # fmt: skip
    row = {"run_id": rid, "kind": "baseline", "seed": 0, "collapse_reason": collapse}
    return RunRecord(row, steps)


def files(root: Path, sub: str) -> list[Path]:
    return sorted((root / sub).glob("*.parquet"))


def test_every_file_of_a_table_has_one_schema_that_readers_take_directly(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:  # a file per run: the most files to disagree
        store.write(record("a"))
        store.write(record("b", collapse="non-finite", loss=1.0))  # a new telemetry column
        store.write(record("c", loss=2.0))
    for sub in ("runs", "steps"):
        schemas = {pq.read_schema(p).remove_metadata() for p in files(tmp_path, sub)}
        assert len(schemas) == 1, sub  # the widening rewrote the first file
    assert pq.read_schema(files(tmp_path, "runs")[0]).field("collapse_reason").type == "string"
    runs = pd.read_parquet(tmp_path / "runs").sort_values("run_id")
    assert list(runs["run_id"]) == ["a", "b", "c"]
    assert list(runs["collapse_reason"].isna()) == [True, False, True]
    steps = pads.dataset(tmp_path / "steps").to_table()
    assert steps.num_rows == 9 and steps.schema.field("telemetry.loss").type == "double"
    assert store.steps(["b"])["telemetry.loss"].tolist() == [1.0] * 3


def test_a_column_without_a_declared_type_is_refused(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store, pytest.raises(ValueError, match=r"\['colour'\]"):
        store.write(RunRecord({"run_id": "a", "colour": "red"}))
    assert "colour" not in RUNS_SCHEMA.names


def test_runs_are_written_in_batches(tmp_path: Path) -> None:
    with ResultStore(tmp_path, batch_runs=3, flush_seconds=3600) as store:
        for i in range(7):
            store.write(record(f"r{i}"))
        assert len(files(tmp_path, "runs")) == 2  # 3 + 3 written, 1 waiting
        assert len(store.finished()) == 6
    assert len(files(tmp_path, "runs")) == 3 and len(store.finished()) == 7
    assert len(store.steps()) == 7 * 3


def test_a_waiting_batch_is_written_after_flush_seconds(tmp_path: Path) -> None:
    with ResultStore(tmp_path, batch_runs=1000, flush_seconds=0.05) as store:
        store.write(record("a"))
        deadline = time.monotonic() + 60
        while not store.finished():  # the timer thread writes it; no write call needed
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert store.finished() == {"a"}


def test_a_second_writer_is_refused_with_the_folder_and_holder(tmp_path: Path) -> None:
    first = ResultStore(tmp_path)
    first.prepare()
    with pytest.raises(StoreLocked, match=rf"{tmp_path}.*pid {os.getpid()}"):
        ResultStore(tmp_path).prepare()
    first.write(record("a"))
    first.close()
    with ResultStore(tmp_path) as second:  # free again
        second.write(record("b"))
    assert ResultStore(tmp_path).finished() == {"a", "b"}


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / "runs").mkdir()
        stale = tmp_path / "runs" / f".part-x.parquet.{int(dead.stdout)}.ab12cd34.tmp"
        legacy = tmp_path / "runs" / ".0123.parquet.tmp"  # the old, shared name: no writer pid
        in_flight = tmp_path / "runs" / f".part-y.parquet.{live.pid}.ab12cd34.tmp"
        for path in (stale, legacy, in_flight):
            path.write_bytes(b"half a file")
        ResultStore(tmp_path).prepare()
        assert not stale.exists() and not legacy.exists() and in_flight.exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_run_file_that_does_not_read_back_is_moved_aside_and_redone(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tiny_plan(seeds=[0])
    first = run_audit(plan, tmp_path, progress=False, flush_seconds=0).runs()
    victim = files(tmp_path, "runs")[0]
    lost = pd.read_parquet(victim)["run_id"].item()
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    capsys.readouterr()

    redone: list[str] = []
    store = run_audit(plan, tmp_path, progress=False, on_record=lambda r: redone.append(r.run_id))
    assert redone == [lost]
    message = capsys.readouterr().err
    assert victim.name in message and "moved to" in message and "redone" in message
    assert (tmp_path / "corrupt" / f"runs-{victim.name}").exists()
    runs = pd.read_parquet(tmp_path / "runs")  # every file reads back again
    assert sorted(runs["run_id"]) == sorted(first["run_id"])
    assert store.finished() == set(first["run_id"])


def test_steps_without_their_runs_file_are_removed(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:
        store.write(record("a"))
    (tmp_path / "runs" / files(tmp_path, "steps")[0].name).unlink()  # killed between the two
    with ResultStore(tmp_path) as store:
        assert not files(tmp_path, "steps") and not store.finished()


def test_the_readme_one_liners_read_an_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Reading results")[1].split("\n## ")[0]
    code = section.split("```python\n")[1].split("```")[0]
    plan = tiny_plan(seeds=[0, 1])
    run_audit(plan, tmp_path / "results" / "digits", progress=False, flush_seconds=0)
    monkeypatch.chdir(tmp_path)
    names: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), names)  # verbatim
    runs, steps, rates, worst = (names[k] for k in ("runs", "steps", "rates", "worst"))
    assert len(runs) == plan.n_runs and runs["run_id"].is_unique  # type: ignore[arg-type]
    assert len(steps) and (steps["step"] >= 10).all()  # type: ignore[arg-type,index]
    assert len(rates) == 1 + 4 and set(rates.columns) == {  # type: ignore[attr-defined]
        "intervention", "magnitude", "collapse_rate"}  # fmt: skip
    assert worst.height == 5  # type: ignore[attr-defined]
