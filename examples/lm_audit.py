"""A scripted audit of language-model training: a learning-rate shock, with and without a
stabilizer.

Each seed trains the tiny GPT-2 of ``trainenv/TinyLM-v0`` to the shock step, then forks the
run: one branch takes the shock alone, the other takes the same shock with gradient clipping
and a learning-rate back-off in force (a recipe with stabilizers; the back-off cancels only a
tenth of the shock). Forks share every update before the shock, so the two branches differ
by the stabilizer alone. Prints the validation loss of both branches side by side (first
seed) and how often each survived the episode.

    python examples/lm_audit.py            # a minute or two on one CPU thread
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import trainenv  # noqa: E402, F401  (registers the environments)
from trainenv.env import TrainEnv  # noqa: E402

SEEDS = (0, 1, 2, 3)
SHOCK_STEP = 8  # of 30 steps of 10 updates
SHOCK = {"lr_shock": 100.0}  # learning rate x100 for 5 steps
STABILIZER = {"grad_clip": 0.5, "lr_backoff": 0.1}  # both for the same 5 steps


def branch(env: TrainEnv, stabilize: bool) -> tuple[list[float], str | None]:
    """Continue ``env`` from the shock to the end; return its validation losses and its
    collapse reason (``None`` if it survived)."""
    losses = []
    for step in itertools.count(SHOCK_STEP):
        action = {}
        if step == SHOCK_STEP:
            action = {**SHOCK, **STABILIZER} if stabilize else SHOCK
        _, _, terminated, truncated, info = env.step(env.action_spec.encode(action))
        losses.append(info["telemetry"]["val_loss"])
        if terminated or truncated:
            return losses, info["collapse"]
    raise AssertionError("unreachable: episodes end")


def main() -> None:
    torch.set_num_threads(1)
    survived = {"shock alone": 0, "shock + stabilizer": 0}
    for seed in SEEDS:
        env = gym.make("trainenv/TinyLM-v0", observation="telemetry", action_mode="continuous")
        env = env.unwrapped
        env.reset(seed=seed)
        for _ in range(SHOCK_STEP):
            env.step(env.action_spec.encode({}))
        stabilized = env.fork()
        alone, alone_collapse = branch(env, stabilize=False)
        helped, helped_collapse = branch(stabilized, stabilize=True)
        survived["shock alone"] += alone_collapse is None
        survived["shock + stabilizer"] += helped_collapse is None
        if seed == SEEDS[0]:
            print_side_by_side(alone, helped)
        print(f"seed {seed}: shock alone -> {alone_collapse or 'survived'}, "
              f"shock + stabilizer -> {helped_collapse or 'survived'}")  # fmt: skip
    for name, count in survived.items():
        print(f"{name:20s} survived {count}/{len(SEEDS)} seeds")


def print_side_by_side(alone: list[float], helped: list[float]) -> None:
    print(f"seed {SEEDS[0]}: validation loss (nats/token) from the shock at step {SHOCK_STEP}")
    print(f"{'step':>4}  {'shock alone':>12}  {'+ stabilizer':>12}")
    for i in range(max(len(alone), len(helped))):
        cells = [f"{run[i]:12.3f}" if i < len(run) else f"{'(collapsed)':>12}"
                 for run in (alone, helped)]  # fmt: skip
        print(f"{SHOCK_STEP + i + 1:>4}  {cells[0]}  {cells[1]}")


if __name__ == "__main__":
    main()
