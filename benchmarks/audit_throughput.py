"""Audit throughput: the per-run ``process`` backend against the ``population`` backend, side by
side on the main job and on ``examples/plans/digits_quick.yaml``, with both margin profiles.

The main job is ``trainenv audit`` without a plan (:func:`~trainenv.audit.plan.default_plan`:
CartPole PPO, 5 seeds x 13 runs). Each plan is audited from scratch into a fresh directory by
each backend (each with its default workers: the CPU count for process, 1 for population;
start-up included), one after the other; the ratio is
process wall time / population wall time (target, issue 11: >= 4x). Then each backend's margin
profile (per recipe and dimension: the margin's position in the magnitude range with its
bootstrap interval) is printed side by side, with whether the two intervals overlap.

    python benchmarks/audit_throughput.py [--plans main digits] [--workers 2] [--seeds N]

``--seeds`` replaces the plans' seeds (0..N-1), e.g. a quicker check with fewer. Compare
numbers measured under the same load only.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from trainenv.audit.plan import AuditPlan, default_plan
from trainenv.audit.runner import run_audit
from trainenv.audit.summary import Summary, summarize

PLANS = {
    "main": default_plan,
    "digits": lambda: AuditPlan.from_yaml(
        Path(__file__).parents[1] / "examples" / "plans" / "digits_quick.yaml"
    ),
}
BACKENDS = ("process", "population")


def audit(plan: AuditPlan, backend: str, workers: int | None) -> tuple[float, Summary]:
    """Wall seconds of the whole audit (workers' start-up included) and its summary."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        store = run_audit(plan, out, backend=backend, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        return seconds, summarize(store.runs())


def overlap(a: tuple[float, float], b: tuple[float, float]) -> str:
    if any(math.isnan(x) for x in (*a, *b)):
        return "n/a"
    return "yes" if a[0] <= b[1] and b[0] <= a[1] else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", choices=list(PLANS), default=list(PLANS))
    parser.add_argument(
        "--workers", type=int, help="for both backends (default: each backend's own default)"
    )
    parser.add_argument("--seeds", type=int, help="replace the plans' seeds with 0..N-1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workers = {b: args.workers or default_plan().resolved_workers(b) for b in BACKENDS}
    print(f"{os.cpu_count()} CPUs; workers {workers}; load {os.getloadavg()[0]:.2f}")
    ratios = {}
    for name in args.plans:
        plan = PLANS[name]()
        if args.seeds:
            plan = plan.model_copy(update={"seeds": tuple(range(args.seeds))})
        results = {b: audit(plan, b, workers[b]) for b in BACKENDS}
        ratios[name] = results["process"][0] / results["population"][0]
        print(f"\n{name}: {plan.n_runs} runs")
        for backend, (seconds, _) in results.items():
            print(f"  {backend:10s} {seconds:7.1f} s  {plan.n_runs / seconds * 60:7.1f} runs/min")
        print("  margin position [CI] by dimension: process | population | overlap")
        profiles = {
            b: s.profile.set_index(["recipe", "dimension"]) for b, (_, s) in results.items()
        }
        for key, row in profiles["process"].iterrows():
            other = profiles["population"].loc[key] if key in profiles["population"].index else None
            cells = [f"{row.position:.2f} [{row.position_lo:.2f}, {row.position_hi:.2f}]"]
            if other is None:
                cells.append("missing")
                verdict = "n/a"
            else:
                cells.append(
                    f"{other.position:.2f} [{other.position_lo:.2f}, {other.position_hi:.2f}]"
                )
                verdict = overlap(
                    (row.position_lo, row.position_hi), (other.position_lo, other.position_hi)
                )
            print(f"  {key[0]:>22s} {key[1]:13s} {cells[0]:22s} | {cells[1]:22s} | {verdict}")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    for name, ratio in ratios.items():
        print(f"speedup {name} population vs process: {ratio:.2f}x")


if __name__ == "__main__":
    main()
