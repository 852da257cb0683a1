"""The seed paper's three claims, tested on trainenv's recipes: ``trainenv findings``.

::

    from trainenv.findings import run_findings

    report, findings = run_findings("results/findings", quick=True, workers=2)  # resumable
    print(findings.verdicts())

1. *High final performance is frequently decoupled from training stability*.
2. *Controlled stochasticity buffers learning dynamics*.
3. *Meta-state deviations precede collapse*.

Each verdict ("supported", "not supported", "inconclusive") is computed from confidence
intervals by the rule written in the report (:data:`~trainenv.findings.verdicts.RULES`), never
set by hand. Both versions test every claim on Digits-MLP, CartPole-PPO and TinyLM; ``--quick``
with few recipes and seeds. Claim 2 is a dose-response: each stochasticity knob at three or
more levels against none. Claims 1 and 2 get their seeds by a stated rule: batches of seeds
until every CI-width target is met or a cap is reached.

Submodules: :mod:`~trainenv.findings.verdicts` (the claims and their rules),
:mod:`~trainenv.findings.config` (per-paradigm settings, read from ``paradigms.yaml``),
:mod:`~trainenv.findings.claims` (the statistics), :mod:`~trainenv.findings.dose` (claim 2's
dose-response), :mod:`~trainenv.findings.sampling` (the sample-size rule),
:mod:`~trainenv.findings.run` (running the experiments, resumably),
:mod:`~trainenv.findings.report`, :mod:`~trainenv.findings.report_audits`,
:mod:`~trainenv.findings.report_warning` and :mod:`~trainenv.findings.figures` (the report).
Names load on first use, so ``import trainenv.findings`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_findings": "trainenv.findings.run",
    "write_findings": "trainenv.findings.report",
    "Findings": "trainenv.findings.claims",
    "FindingsConfig": "trainenv.findings.config",
    "Paradigm": "trainenv.findings.config",
    "load_config": "trainenv.findings.config",
    "quick_config": "trainenv.findings.config",
    "full_config": "trainenv.findings.config",
    "FULL_EXPECTED_MINUTES": "trainenv.findings.config",
    "RULES": "trainenv.findings.verdicts",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainenv.findings' has no attribute {name!r}")
