"""Kill an audit process mid-way (SIGKILL), rerun the same command: it finishes, with every run
exactly once and the same metrics as an audit that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from trainenv.audit.runner import run_audit
from trainenv.audit.store import ResultStore

from .helpers import OUTCOME_COLUMNS
from .test_audit_runner import tiny_plan


def audit_command(plan: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainenv.cli",
        "audit",
        str(plan),
        "--out",
        str(out),
        "--backend",
        "serial",
        "--no-report",
        "--flush-seconds",
        "0",  # every run written as it finishes: killed mid-way, some are there
    ]


@pytest.mark.slow
def test_killed_audit_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    plan = tiny_plan(seeds=[0, 1, 2, 3, 4, 5])
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    process = subprocess.Popen(
        audit_command(plan_file, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while len(list((out / "runs").glob("*.parquet"))) < 3:  # mid-way: after a group or so
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(ResultStore(out).finished())
    assert 0 < done_before < plan.n_runs  # it really was killed mid-way

    rerun = subprocess.run(
        audit_command(plan_file, out), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "Stability profile" in rerun.stdout

    resumed = ResultStore(out)
    runs = resumed.runs()
    assert len(runs) == plan.n_runs and runs["run_id"].is_unique
    assert not resumed.steps().duplicated(["run_id", "step"]).any()
    assert not list(out.glob("*/.*"))  # no temporary files left

    clean = run_audit(plan, tmp_path / "clean", progress=False)
    expected = clean.runs().set_index("run_id").sort_index()[OUTCOME_COLUMNS]
    pd.testing.assert_frame_equal(runs.set_index("run_id").sort_index()[OUTCOME_COLUMNS], expected)
    steps = resumed.steps().sort_values(["run_id", "step"]).reset_index(drop=True)
    clean_steps = clean.steps().sort_values(["run_id", "step"]).reset_index(drop=True)
    pd.testing.assert_series_equal(steps["p"], clean_steps["p"])
