"""Environment overhead: ``TrainEnv.step`` against the bare trainer loop, measured side by side.

For each case the same number of updates runs (a) through ``env.step`` with no-op actions and
(b) through ``trainer.advance(k)`` on an identical trainer, interleaved round by round so both
see the same machine load; the printed ratio is the median over rounds of (a) / (b). The cost of
``env.fork()`` is printed relative to one step. Targets (issue 2): CartPole-PPO k=1 <= 1.02;
Digits-MLP k=1 <= 1.5 and k>=10 <= 1.05; TinyLM <= 1.05; a fork <= 10 % of a step.

    python benchmarks/overhead.py [--rounds 7] [--cases digits cartpole lm]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch

import trainenv

# name -> (env id, env kwargs, steps per round)
CASES: dict[str, tuple[str, dict, int]] = {
    "digits": ("trainenv/Digits-MLP-v0", {"k": 1}, 200),
    "digits-k10": ("trainenv/Digits-MLP-v0", {"k": 10}, 30),
    "cartpole": ("trainenv/CartPole-PPO-v0", {"k": 1}, 10),
    "lm": ("trainenv/TinyLM-v0", {"k": 1}, 20),
}


def timed(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def measure(env_id: str, kwargs: dict, steps: int, rounds: int) -> dict[str, float]:
    env = gym.make(env_id, max_steps=10**6, **kwargs).unwrapped
    bare = gym.make(env_id, max_steps=10**6, **kwargs).unwrapped.trainer
    env.reset(seed=0)
    bare.reset(seed=0)
    noop = 0 if env.action_space.__class__.__name__ == "Discrete" else env.action_spec.encode({})
    env.step(noop)  # warm-up: first-call allocations
    bare.advance(env.k)
    ratios, step_times, fork_times = [], [], []
    for _ in range(rounds):
        t_env = timed(lambda: env.step(noop), steps)
        t_bare = timed(lambda: bare.advance(env.k), steps)
        ratios.append(t_env / t_bare)
        step_times.append(t_env)
        fork_times.append(timed(env.fork, 5))
    step = statistics.median(step_times)
    return {
        "ratio": statistics.median(ratios),
        "step_ms": step * 1e3,
        "fork_ms": statistics.median(fork_times) * 1e3,
        "fork_over_step": statistics.median(fork_times) / step,
    }


def raw_torch_digits(steps: int = 300) -> tuple[float, float]:
    """A hand-written loop of the Digits recipe (same MLP, fused Adam, batch 32, validation every
    10 updates) against ``SupervisedTrainer.advance(1)``: (raw ms per update, trainer / raw)."""
    from trainenv.trainers.supervised import SupervisedTrainer

    trainer = SupervisedTrainer()
    trainer.reset(0)
    data = trainer._data
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 10))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    state = {"i": 0}

    def raw_update() -> None:
        i = state["i"] = state["i"] + 1
        idx = torch.randint(len(data.y_train), (32,))
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 10 == 0:
            with torch.no_grad():
                model(data.x_val).argmax(1)

    ratios, raws = [], []
    for _ in range(5):
        raw = timed(raw_update, steps)
        ratios.append(timed(lambda: trainer.advance(1), steps) / raw)
        raws.append(raw)
    return statistics.median(raws) * 1e3, statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'case':<12} {'env/bare':>9} {'step ms':>9} {'fork ms':>9} {'fork/step':>10}")
    for name in args.cases:
        env_id, kwargs, steps = CASES[name]
        if env_id not in trainenv.ENV_IDS:
            print(f"{name:<12} (not registered: {env_id})")
            continue
        r = measure(env_id, kwargs, steps, args.rounds)
        print(f"{name:<12} {r['ratio']:>9.3f} {r['step_ms']:>9.3f} {r['fork_ms']:>9.3f} "
              f"{r['fork_over_step']:>10.3f}")  # fmt: skip
    if "digits" in args.cases:
        raw_ms, ratio = raw_torch_digits()
        print(
            f"\nfor reference: a hand-written Digits loop takes {raw_ms:.3f} ms per update; "
            f"SupervisedTrainer.advance(1) (with its telemetry) takes {ratio:.2f}x that"
        )


if __name__ == "__main__":
    main()
