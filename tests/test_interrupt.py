"""An audit on local worker processes, stopped mid-way by Ctrl-C, SIGTERM or kill -9: no
process of it survives, Ctrl-C and SIGTERM end it cleanly with every finished run kept, and
rerunning the same command finishes the audit without redoing a finished run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from trainenv.audit.store import ResultStore

from .test_audit_runner import tiny_plan

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

INTERRUPTED = "interrupted — rerun the same command to resume"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                status = (entry / "status").read_text()
            except OSError:  # gone meanwhile
                continue
            parents[int(entry.name)] = int(status.split("PPid:")[1].split()[0])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (dead, not yet reaped)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:4]
    except OSError:
        return False


def audit(plan: Path, out: Path) -> list[str]:
    options = ["--backend", "process", "--workers", "2", "--no-report", "--flush-seconds", "0"]
    return [sys.executable, "-m", "trainenv.cli", "audit", str(plan), "--out", str(out), *options]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "kill-9"])
def test_a_stopped_audit_leaves_no_process_and_resumes(tmp_path: Path, how: str) -> None:
    plan = tiny_plan(seeds=list(range(8)), backend="process")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own, as a shell gives a foreground job: Ctrl-C signals the whole group.
    process = subprocess.Popen(
        audit(plan_file, out), env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not list((out / "runs").glob("*.parquet")):  # the first runs are written
        assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    children = descendants(process.pid)
    assert len(children) >= 2  # the workers (and the resource tracker)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, err = process.communicate(timeout=120)

    while survivors := {pid for pid in children if alive(pid)}:
        assert time.monotonic() < deadline, f"still alive: {survivors}"
        time.sleep(0.1)
    expected = {"ctrl-c": 130, "sigterm": 143, "kill-9": -signal.SIGKILL}[how]
    assert process.returncode == expected, err
    if how != "kill-9":
        assert INTERRUPTED in err and "Traceback" not in err
    kept = set((out / "runs").glob("*.parquet"))
    finished = ResultStore(out).finished()
    assert 0 < len(finished) < plan.n_runs  # it really was stopped mid-way

    rerun = subprocess.run(audit(plan_file, out), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    new = set((out / "runs").glob("*.parquet")) - kept
    redone = {r for p in new for r in pd.read_parquet(p)["run_id"]}
    assert not redone & finished  # finished runs were not redone
    runs = ResultStore(out).runs()
    assert len(runs) == plan.n_runs and runs["run_id"].is_unique


def test_a_second_audit_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(tiny_plan(seeds=[0]).to_yaml())
    out = tmp_path / "out"
    with ResultStore(out):  # another audit writing there
        refused = subprocess.run(audit(plan_file, out), capture_output=True, text=True)
    assert refused.returncode == 2
    assert str(out) in refused.stderr and f"pid {os.getpid()}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (out / "plan.yaml").exists() and not ResultStore(out).finished()


@pytest.mark.slow
def test_ctrl_c_stops_findings_cleanly(tmp_path: Path) -> None:
    """``trainenv findings`` stopped by Ctrl-C: exit 130, the resume hint, no traceback, no
    worker left behind."""
    out = tmp_path / "findings"
    command = [sys.executable, "-m", "trainenv.cli", "findings", "--quick", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (out / "claim3").is_dir():  # past the imports: claim 3's runs have started
        assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.0)
    children = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    while survivors := {pid for pid in children if alive(pid)}:
        assert time.monotonic() < deadline, f"still alive: {survivors}"
        time.sleep(0.1)
    assert process.returncode == 130, err
    assert INTERRUPTED in err and "Traceback" not in err
