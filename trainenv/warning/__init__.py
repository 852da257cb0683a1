"""Early warning: detectors that may precede collapse, and their evaluation. They observe, never
act (controllers in ``agents/`` may act on them).

::

    from trainenv.audit import ResultStore
    from trainenv.warning import (CALIBRATION, Ramp, evaluate_detectors, fit_meta_states,
                                  simulate_runs, tasks_for, with_meta_states)

    ramps = [Ramp("lr_shock", start=2.0, end=300.0, steps=25, onset=10)]
    tasks = tasks_for("supervised", "trainenv/Digits-MLP-v0", ramps, seeds=range(4),
                      calibration=8)
    traces = simulate_runs(tasks, ResultStore("results/warning"), workers=2)  # resumable
    encoders = fit_meta_states([t for t in traces if t.scenario == CALIBRATION])
    table = evaluate_detectors(with_meta_states(traces, encoders), horizon=10)  # a row each

Submodules: :mod:`~trainenv.warning.detectors` (streaming detectors and threshold
calibration), :mod:`~trainenv.warning.learned` (a logistic-regression baseline),
:mod:`~trainenv.warning.simulation` (calibration and reference runs and ramps, recorded as
traces by :mod:`~trainenv.warning.recording`, as population members where the env has a
population form: :mod:`~trainenv.warning.populations`), :mod:`~trainenv.warning.metastates`
(the full and leak-free meta-states fitted on calibration runs),
:mod:`~trainenv.warning.evaluation` (detection rate, lead time, false alarms, AUROC).
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
    "threshold_at": "trainenv.warning.detectors",
    "LogisticBaseline": "trainenv.warning.learned",
    "FULL": "trainenv.warning.metastates",
    "LEAK_FREE": "trainenv.warning.metastates",
    "fit_meta_states": "trainenv.warning.metastates",
    "leak_free_channels": "trainenv.warning.metastates",
    "with_meta_states": "trainenv.warning.metastates",
    "CALIBRATION": "trainenv.warning.simulation",
    "Ramp": "trainenv.warning.simulation",
    "Task": "trainenv.warning.simulation",
    "Trace": "trainenv.warning.simulation",
    "tasks_for": "trainenv.warning.simulation",
    "simulate_run": "trainenv.warning.recording",
    "simulate_runs": "trainenv.warning.simulation",
    "collapse_onset": "trainenv.warning.recording",
    "traces_frame": "trainenv.warning.simulation",
    "read_traces": "trainenv.warning.simulation",
    "DETECTORS": "trainenv.warning.evaluation",
    "PRIMARY": "trainenv.warning.evaluation",
    "FULL_METASTATE": "trainenv.warning.evaluation",
    "BASELINE": "trainenv.warning.evaluation",
    "LEARNED": "trainenv.warning.evaluation",
    "CLAIM3": "trainenv.warning.evaluation",
    "evaluate_detectors": "trainenv.warning.evaluation",
    "auroc": "trainenv.warning.evaluation",
    "lead_time": "trainenv.warning.evaluation",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainenv.warning' has no attribute {name!r}")
