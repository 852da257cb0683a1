"""Audit throughput: runs per minute of a fixed small Digits plan, by backend, side by side.

The plan: ``trainenv/Digits-MLP-v0``, 8 seeds, one onset (10 steps), horizon 20, lr_shock and
weight_noise at 3 magnitudes each: 8 groups of 1 unperturbed + 6 perturbed runs (56 runs).
Each backend audits it from scratch into a fresh directory; the time includes starting the
workers (and Ray), which a real audit pays once too. Runs per minute = 56 / minutes.

    python benchmarks/audit_throughput.py [--backends serial process-1 process-2 ray-2]

Run it on an otherwise idle machine: the numbers are only comparable under the same load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from trainenv.audit.plan import AuditPlan
from trainenv.audit.runner import run_audit

PLAN = AuditPlan.model_validate(
    {
        "env": "trainenv/Digits-MLP-v0",
        "interventions": [
            {"name": "lr_shock", "magnitudes": [10, 100, 1000]},
            {"name": "weight_noise", "magnitudes": [0.3, 1, 3]},
        ],
        "onsets": [10],
        "horizon": 20,
        "seeds": 8,
    }
)
# name -> (backend, workers)
CASES = {
    "serial": ("serial", 1),
    "process-1": ("process", 1),
    "process-2": ("process", 2),
    "ray-2": ("ray", 2),
}


def seconds(backend: str, workers: int) -> float:
    """Wall time of the whole audit, worker start-up included."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_audit(PLAN, out, backend=backend, workers=workers, progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    print(f"plan: {PLAN.n_runs} runs; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    results = {name: seconds(*CASES[name]) for name in args.backends}
    width = max(len(n) for n in results)
    for name, wall in results.items():
        print(f"{name.ljust(width)}  {PLAN.n_runs / wall * 60:7.1f} runs/min  ({wall:.1f} s)")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
