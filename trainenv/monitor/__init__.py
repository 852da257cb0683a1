"""Stability monitoring inside the training loops people already run.

::

    from trainenv.monitor import StabilityMonitor

    monitor = StabilityMonitor(["loss", "grad_norm", "lr"], calibration_updates=64)
    for batch in data:
        ...  # the user's own update
        for alarm in monitor.observe({"loss": loss, "grad_norm": norm, "lr": lr}):
            print(alarm.update, alarm.detector, alarm.score)

Adapters: :class:`~trainenv.monitor.hf.MonitorCallback` (a transformers ``TrainerCallback``)
and :class:`~trainenv.monitor.sb3.SB3MonitorCallback` (a stable-baselines3 ``BaseCallback``);
optional acting through them with a user's policy (:mod:`trainenv.monitor.actions`); events to
Parquet (:mod:`trainenv.monitor.log`). Names load on first use: ``import trainenv.monitor``
imports neither transformers nor stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Alarm": "trainenv.monitor.monitor",
    "StabilityMonitor": "trainenv.monitor.monitor",
    "DETECTORS": "trainenv.monitor.monitor",
    "DEFAULT_DETECTORS": "trainenv.monitor.monitor",
    "alarm_rate": "trainenv.monitor.monitor",
    "Action": "trainenv.monitor.actions",
    "Actor": "trainenv.monitor.actions",
    "LiveRun": "trainenv.monitor.actions",
    "Policy": "trainenv.monitor.actions",
    "STABILIZERS": "trainenv.monitor.actions",
    "EventLog": "trainenv.monitor.log",
    "MONITOR_SCHEMA": "trainenv.monitor.log",
    "MonitorCallback": "trainenv.monitor.hf",
    "SB3MonitorCallback": "trainenv.monitor.sb3",
    "fit_live_encoder": "trainenv.monitor.calibrate",
    "reference_encoder": "trainenv.monitor.calibrate",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainenv.monitor' has no attribute {name!r}")
