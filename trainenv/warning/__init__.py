"""Early warning: detectors that may precede collapse, and their evaluation. They observe, never
act (controllers in ``agents/`` may act on them).

::

    from trainenv.audit import ResultStore
    from trainenv.warning import Ramp, evaluate_detectors, simulate_runs, tasks_for

    ramps = [Ramp("lr_shock", start=2.0, end=300.0, steps=25, onset=10)]
    tasks = tasks_for("supervised", "trainenv/Digits-MLP-v0", ramps, seeds=range(4))
    traces = simulate_runs(tasks, ResultStore("results/warning"), workers=2)  # resumable
    table = evaluate_detectors(traces, horizon=10)  # one row per detector

Submodules: :mod:`~trainenv.warning.detectors` (streaming detectors and threshold
calibration), :mod:`~trainenv.warning.simulation` (reference runs and ramps, recorded as
traces), :mod:`~trainenv.warning.evaluation` (detection rate, lead time, false alarms, AUROC).
Names load on first use, so ``import trainenv.warning`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Detector": "trainenv.warning.detectors",
    "LossSpike": "trainenv.warning.detectors",
    "GradNormZScore": "trainenv.warning.detectors",
    "Cusum": "trainenv.warning.detectors",
    "MetaStateDeviation": "trainenv.warning.detectors",
    "SelfDeviation": "trainenv.warning.detectors",
    "calibrate_threshold": "trainenv.warning.detectors",
    "Ramp": "trainenv.warning.simulation",
    "Task": "trainenv.warning.simulation",
    "Trace": "trainenv.warning.simulation",
    "tasks_for": "trainenv.warning.simulation",
    "simulate_run": "trainenv.warning.simulation",
    "simulate_runs": "trainenv.warning.simulation",
    "collapse_onset": "trainenv.warning.simulation",
    "traces_frame": "trainenv.warning.simulation",
    "read_traces": "trainenv.warning.simulation",
    "DETECTORS": "trainenv.warning.evaluation",
    "PRIMARY": "trainenv.warning.evaluation",
    "evaluate_detectors": "trainenv.warning.evaluation",
    "auroc": "trainenv.warning.evaluation",
    "lead_time": "trainenv.warning.evaluation",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainenv.warning' has no attribute {name!r}")
