"""Populations against single runs: aggregate throughput of N members trained in one batched
computation, side by side with the registered env's single-run trainer on the same recipe.

CartPole PPO (``trainenv/CartPole-PPO-v0``'s recipe: 8 envs x 32 steps, 20 epochs) is measured
in environment steps per second, the Digits MLP (``trainenv/Digits-MLP-v0``) in updates per
second, both summed over the members, for N = 1, 8, 32 against ``SB3Trainer`` /
``SupervisedTrainer``. Every round times each contender in turn, so all see the same machine
load; a speedup is the median over rounds of (population throughput / single-run throughput).
One torch thread. Targets (issue 11): CartPole N=8 >= 4x, N=32 >= 6x; Digits N=32 >= 8x.

    python benchmarks/population.py [--rounds 3] [--sizes 1 8 32] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch

import trainenv  # noqa: F401  (registers the env ids)
from trainenv.trainers.population import CartPolePPOPopulation, DigitsMLPPopulation

# recipe -> (env id, population class, unit, work per update per member, updates per round
# for the single run and for N = 1, 8, 32 at scale 1)
RECIPES: dict[str, tuple[str, Callable[[int], object], str, int, dict[int | str, int]]] = {
    "cartpole": (
        "trainenv/CartPole-PPO-v0", CartPolePPOPopulation, "env-steps/s", 256,
        {"single": 4, 1: 4, 8: 2, 32: 1},
    ),
    "digits": (
        "trainenv/Digits-MLP-v0", DigitsMLPPopulation, "updates/s", 1,
        {"single": 200, 1: 200, 8: 100, 32: 40},
    ),
}  # fmt: skip


def throughput(advance: Callable[[int], object], updates: int, work: int) -> float:
    start = time.perf_counter()
    advance(updates)
    return work * updates / (time.perf_counter() - start)


def measure(recipe: str, sizes: list[int], rounds: int, scale: float) -> dict[str, float]:
    """Median aggregate throughput of the single run and of each population size, and the
    median per-round speedup of each size over the single run."""
    env_id, population_class, unit, work, plan = RECIPES[recipe]
    single = gym.make(env_id, observation="telemetry").unwrapped.trainer  # type: ignore[attr-defined]
    single.reset(0)
    populations = {}
    for n in sizes:
        population = population_class(n)
        population.reset(list(range(n)))  # type: ignore[attr-defined]
        population.advance(1)  # type: ignore[attr-defined]  # warm-up: first-call allocations
        populations[n] = population
    single.advance(1)

    def updates(key: int | str) -> int:
        return max(1, round(plan.get(key, plan[32]) * scale))

    rates: dict[int | str, list[float]] = {key: [] for key in ["single", *sizes]}
    for _ in range(rounds):
        rates["single"].append(throughput(single.advance, updates("single"), work))
        for n, population in populations.items():
            rates[n].append(throughput(population.advance, updates(n), work * n))  # type: ignore[attr-defined]
    result = {f"{recipe} single": statistics.median(rates["single"])}
    for n in sizes:
        result[f"{recipe} N={n}"] = statistics.median(rates[n])
        speedups = [p / s for p, s in zip(rates[n], rates["single"])]
        result[f"speedup {recipe} N={n}"] = statistics.median(speedups)
    print(f"{recipe} ({unit}, aggregate over members; median of {rounds} rounds)")
    print(f"  single run   {result[f'{recipe} single']:10.0f}")
    for n in sizes:
        print(
            f"  N={n:<3d}        {result[f'{recipe} N={n}']:10.0f}   "
            f"{result[f'speedup {recipe} N={n}']:5.2f}x the single run"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies updates per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"one torch thread; load average before: {load} on {os.cpu_count()} CPUs")
    results = {}
    for recipe in ("digits", "cartpole"):
        results.update(measure(recipe, args.sizes, args.rounds, args.scale))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average after: {load}")
    if 8 in args.sizes:
        print(f"speedup cartpole N=8: {results['speedup cartpole N=8']:.2f}x")


if __name__ == "__main__":
    main()
