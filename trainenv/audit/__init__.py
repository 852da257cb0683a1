"""Perturbation audits: paired runs, stability metrics, resumable results and reports.

::

    from trainenv.audit import AuditPlan, run_audit, write_report

    plan = AuditPlan.from_yaml("examples/plans/digits_quick.yaml")
    store = run_audit(plan, "results/digits")  # resumes whatever results/digits holds
    report, summary = write_report("results/digits")

Submodules: :mod:`~trainenv.audit.plan` (plans; :mod:`~trainenv.audit.plan_errors` words their
errors), :mod:`~trainenv.audit.runner` (paired runs), :mod:`~trainenv.audit.population`
(paired runs as members of populations), :mod:`~trainenv.audit.backends` (serial, local
processes, populations, Ray), :mod:`~trainenv.audit.store`
(Parquet results), :mod:`~trainenv.audit.metrics` (stability metrics),
:mod:`~trainenv.audit.summary` (summaries and the terminal table),
:mod:`~trainenv.audit.report` (Markdown and figures; :mod:`~trainenv.audit.html`, the same
as one self-contained page),
:mod:`~trainenv.audit.controllers` (controller evaluations in the same format),
:mod:`~trainenv.audit.tasks` (tasks through a backend into a store),
:mod:`~trainenv.audit.progress` (a bar on a terminal, plain lines in a log).
Early warning is :mod:`trainenv.warning`; the paper's three claims, :mod:`trainenv.findings`.
Names load on first use, so ``import trainenv.audit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AuditPlan": "trainenv.audit.plan",
    "InterventionGrid": "trainenv.audit.plan",
    "Recipe": "trainenv.audit.plan",
    "Stabilizer": "trainenv.audit.plan",
    "default_plan": "trainenv.audit.plan",
    "run_audit": "trainenv.audit.runner",
    "run_id": "trainenv.audit.runner",
    "step_row": "trainenv.audit.runner",
    "ResultStore": "trainenv.audit.store",
    "RunRecord": "trainenv.audit.store",
    "run_tasks": "trainenv.audit.tasks",
    "backend_for": "trainenv.audit.tasks",
    "summarize": "trainenv.audit.summary",
    "format_summary": "trainenv.audit.summary",
    "write_report": "trainenv.audit.report",
    "CONTROLLER": "trainenv.audit.controllers",
    "NOOP": "trainenv.audit.controllers",
    "UNPERTURBED": "trainenv.audit.controllers",
    "ControllerSummary": "trainenv.audit.controllers",
    "summarize_controllers": "trainenv.audit.controllers",
    "write_controller_report": "trainenv.audit.controllers",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainenv.audit' has no attribute {name!r}")
