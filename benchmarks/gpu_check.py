"""GPU check: the LM environments and a small audit on CUDA, with their speed.

For each LM env (``TinyLM-v0``, ``SmallLM-v0``) with ``trainer_kwargs={"device": "cuda"}``: one
warm-up step, then ``--steps`` timed steps (updates per second, the device synchronised before
reading the clock), and a fork continued beside its parent with the same actions (their
telemetry must match bit for bit: the run owns its CUDA generators). Then a small audit of
``SmallLM-v0`` on CUDA (serial backend: CUDA does not survive a fork into worker processes):
``lr_shock`` at one magnitude, 2 seeds, onset 2, horizon 4, and its wall time.

    python benchmarks/gpu_check.py [--steps N]

Without CUDA it says so and exits 0: there is nothing to measure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch

import trainenv  # noqa: F401  (registers the environments)
from trainenv.audit.plan import AuditPlan
from trainenv.audit.runner import run_audit

LM_ENVS = ("trainenv/TinyLM-v0", "trainenv/SmallLM-v0")
ON_CUDA = {"trainer_kwargs": {"device": "cuda"}}
AUDIT = {
    "env": "trainenv/SmallLM-v0",
    "env_kwargs": {**ON_CUDA, "max_steps": 6},
    "interventions": [{"name": "lr_shock", "magnitudes": [100]}],
    "onsets": [2],
    "horizon": 4,
    "seeds": 2,
    "backend": "serial",
}


def env_speed(env_id: str, steps: int) -> tuple[float, bool]:
    """Updates per second over ``steps`` no-op steps, and whether a fork replayed exactly."""
    env = gym.make(env_id, **ON_CUDA).unwrapped
    noop = env.action_spec.encode({})
    env.reset(seed=0)
    env.step(noop)  # warm-up: CUDA kernels load and autotune here
    torch.cuda.synchronize()
    start, updates = time.perf_counter(), env.trainer.updates
    for _ in range(steps):
        env.step(noop)
    torch.cuda.synchronize()
    speed = (env.trainer.updates - updates) / (time.perf_counter() - start)
    fork = env.fork()
    parent = [env.step(noop)[4]["telemetry"] for _ in range(2)]
    child = [fork.step(noop)[4]["telemetry"] for _ in range(2)]
    return speed, parent == child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per env (default 10)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False): nothing to measure.")
        return 0
    torch.set_num_threads(1)
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    for env_id in LM_ENVS:
        speed, same = env_speed(env_id, args.steps)
        print(f"{env_id}: {speed:8.1f} updates/s on CUDA; fork replays its parent: {same}")
    plan = AuditPlan.model_validate(AUDIT)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        store = run_audit(plan, out, progress=False)
        wall = time.perf_counter() - start
        final_p = np.asarray(store.runs()["final_p"])
    print(f"audit: {plan.n_runs} runs of SmallLM-v0 on CUDA in {wall:.1f} s wall "
          f"(final p {final_p.min():.3f} to {final_p.max():.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
