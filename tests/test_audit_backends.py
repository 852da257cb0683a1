"""Backends: local processes and Ray give the same metrics as the serial run, seed for seed
(Ray as populations where the plan has them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from trainenv.audit.backends import make_backend
from trainenv.audit.runner import run_audit
from trainenv.audit.store import ResultStore

from .test_audit_runner import tiny_plan

TIMING = ["wall_s"]
"""The one column of the runs table that differs between backends: seconds measured per run."""


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> ResultStore:
    return run_audit(tiny_plan(), tmp_path_factory.mktemp("serial"), progress=False)


def assert_same_results(store: ResultStore, reference: ResultStore) -> None:
    """Every column of both tables equal, observations included; only the timing may differ."""
    runs = store.runs().set_index("run_id").sort_index()
    expected = reference.runs().set_index("run_id").sort_index()
    pd.testing.assert_frame_equal(runs.drop(columns=TIMING), expected.drop(columns=TIMING))
    steps = store.steps().sort_values(["run_id", "step"]).reset_index(drop=True)
    expected_steps = reference.steps().sort_values(["run_id", "step"]).reset_index(drop=True)
    assert len(expected) and len(expected_steps)  # equal empty tables would prove nothing
    pd.testing.assert_frame_equal(steps, expected_steps)


@pytest.mark.slow
def test_local_processes_match_serial(serial: ResultStore, tmp_path: Path) -> None:
    store = run_audit(tiny_plan(), tmp_path, backend="process", workers=2, progress=False)
    assert_same_results(store, serial)


@pytest.mark.slow
def test_ray_runs_population_batches_as_its_tasks(serial: ResultStore, tmp_path: Path) -> None:
    """Where the plan has populations, each Ray task is one population batch: the records are
    the serial population backend's, column for column (measured seconds aside), and not the
    per-run trainer's (another implementation, other numbers)."""
    population = run_audit(tiny_plan(), tmp_path / "population", backend="population",
                           progress=False)  # fmt: skip
    store = run_audit(tiny_plan(), tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert_same_results(store, population)
    with pytest.raises(AssertionError):
        assert_same_results(store, serial)


@pytest.mark.slow
def test_ray_runs_groups_where_a_recipe_has_no_population(tmp_path: Path) -> None:
    """A setting the population does not take (the trainer's device) leaves the plan without
    a population form: Ray runs one group per task, as the serial per-run backend does."""
    plan = tiny_plan(env_kwargs={"trainer_kwargs": {"device": "cpu"}})
    assert plan.resolved_backend("auto") == "process"
    serial = run_audit(plan, tmp_path / "serial", progress=False)
    store = run_audit(plan, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert_same_results(store, serial)


def test_unknown_backend_and_bad_worker_counts_are_rejected() -> None:
    names = r"\['population', 'serial', 'process', 'ray'\]"
    with pytest.raises(ValueError, match=rf"backend must be one of {names}"):
        make_backend("slurm", 2)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        make_backend("process", 0)


def test_serial_backend_restores_the_callers_thread_count() -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with make_backend("serial", 1) as backend:
            assert list(backend.map_unordered(lambda _: torch.get_num_threads(), [0, 1])) == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
