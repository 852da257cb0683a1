"""Statistical equivalence of the population recipes with the single-run trainers (issue 11).

The batched trainers are other implementations of the registered recipes, so a member matches
a single run in distribution, not draw for draw. Over 16 seeds this audits each recipe twice,
with the per-run ``process`` backend (``SB3Trainer``, ``SupervisedTrainer``) and with the
``population`` backend (``CartPolePPOPopulation``, ``DigitsMLPPopulation``), and compares:

- final performance: the unperturbed run's performance at its last step, per seed;
- collapse rate under the main job's perturbations (``default_plan``: lr_shock, input_noise,
  weight_noise, reward_flip at its magnitudes): per seed, the share of its perturbed runs
  that collapsed, overall and per intervention;

each as a mean over seeds with a 95 % bootstrap interval (seeds resampled), and whether the two
intervals overlap. What runs (chosen to finish in a few minutes on a loaded 2-core machine):

- CartPole PPO: the main job shortened: onset 20 and horizon 10 (30 PPO updates, ~7.7k env
  steps, instead of 40 + 20): its perturbations, tolerance and collapse rule otherwise.
- Digits MLP: the full episode (onset 10 + horizon 40 = 50 steps of 10 updates): the main
  job's perturbations that the recipe has (reward_flip has no digits target: label_noise at the
  same magnitudes stands in for the learning-signal dimension), the main job's tolerance.

    python benchmarks/population_equivalence.py [--recipes cartpole digits] [--seeds 16]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from trainenv.audit.metrics import mean_ci
from trainenv.audit.plan import AuditPlan, InterventionGrid, default_plan
from trainenv.audit.runner import run_audit

BACKENDS = ("process", "population")


def cartpole_plan(seeds: int) -> AuditPlan:
    return default_plan().model_copy(
        update={"seeds": tuple(range(seeds)), "onsets": (20,), "horizon": 10}
    )


def digits_plan(seeds: int) -> AuditPlan:
    main = default_plan()
    grids = [g for g in main.interventions if g.name != "reward_flip"]
    flip = next(g for g in main.interventions if g.name == "reward_flip")
    grids.append(InterventionGrid(name="label_noise", magnitudes=flip.magnitudes))
    return AuditPlan.model_validate(
        {
            "env": "trainenv/Digits-MLP-v0",
            "interventions": [g.model_dump(exclude_none=True) for g in grids],
            "onsets": [10],
            "horizon": 40,
            "seeds": seeds,
            "tolerance": main.tolerance,
        }
    )


PLANS: dict[str, Callable[[int], AuditPlan]] = {"cartpole": cartpole_plan, "digits": digits_plan}


def per_seed(runs: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per seed: final performance of its unperturbed run, and the share of its
    perturbed runs that collapsed (overall and per intervention)."""
    base = runs[runs["kind"] == "baseline"].set_index("run_id")
    last = steps.sort_values("step").groupby("run_id")["performance"].last()
    table = pd.DataFrame({"final performance": last.reindex(base.index).to_numpy()},
                         index=base["seed"].to_numpy())  # fmt: skip
    perturbed = runs[(runs["kind"] == "perturbed") & (runs["status"] == "ok")].copy()
    perturbed["collapsed"] = perturbed["collapsed"].astype(float)
    table["collapse rate"] = perturbed.groupby("seed")["collapsed"].mean()
    for name, rows in perturbed.groupby("intervention"):
        table[f"  {name}"] = rows.groupby("seed")["collapsed"].mean()
    return table.sort_index()


def interval(values: np.ndarray) -> tuple[float, float, float]:
    lo, hi = mean_ci(values, n_boot=2000)
    return float(np.nanmean(values)), lo, hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=list(PLANS), default=list(PLANS))
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.seeds} seeds; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    for recipe in args.recipes:
        plan = PLANS[recipe](args.seeds)
        tables = {}
        for backend in BACKENDS:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                store = run_audit(plan, out, backend=backend, workers=args.workers,
                                  progress=False)  # fmt: skip
                seconds = time.perf_counter() - start
                tables[backend] = per_seed(store.runs(), store.steps())
            print(f"{recipe}: {backend} audit of {plan.n_runs} runs in {seconds:.0f} s")
        print(f"\n{recipe}: mean over seeds [95% bootstrap CI]   process (single-run trainer)"
              "  |  population  |  overlap")  # fmt: skip
        for column in tables["process"].columns:
            cells, bounds = [], []
            for backend in BACKENDS:
                mean, lo, hi = interval(tables[backend][column].to_numpy(dtype=float))
                cells.append(f"{mean:8.3f} [{lo:7.3f}, {hi:7.3f}]")
                bounds.append((lo, hi))
            (a_lo, a_hi), (b_lo, b_hi) = bounds
            known = not any(math.isnan(x) for x in (a_lo, a_hi, b_lo, b_hi))
            overlap = ("yes" if a_lo <= b_hi and b_lo <= a_hi else "NO") if known else "n/a"
            print(f"  {column:22s} {cells[0]}  |  {cells[1]}  |  {overlap}")
        print()
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
