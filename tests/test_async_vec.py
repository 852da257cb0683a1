"""Gymnasium's async vector env with default thread settings (issue 12, item 8).

``gymnasium.make_vec(id, vectorization_mode="async")`` forks its workers after building a dummy
env in the parent. GNU OpenMP is not fork-safe: once the parent has run a parallel region, a
multi-threaded torch op in a forked worker waits forever for a thread pool the child does not
have. The test's own process runs one torch thread (conftest), so each case runs in a fresh
interpreter without ``OMP_NUM_THREADS``, with a parallel region run first; a hang fails the case
at the timeout instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

TIMEOUT_S = 300  # about 15 s on a busy 2-core machine; a deadlock never finishes

SCRIPT = """
import multiprocessing
import sys

import gymnasium
import numpy as np
import torch

import trainenv  # noqa: F401  (registers the ids)

env_id = sys.argv[1]
if torch.get_num_threads() < 2:
    torch.set_num_threads(2)  # what torch picks by default on a machine with 2+ cores
threads = torch.get_num_threads()
x = torch.randn(1000, 1000)
(x @ x).add_(1.0).sum()  # parallel regions: GNU OpenMP's pool now exists in this process
# Fork is the default start method on Linux before Python 3.14; ask for it where it is not.
context = None if multiprocessing.get_start_method() == "fork" else "fork"
envs = gymnasium.make_vec(
    env_id, num_envs=2, vectorization_mode="async", vector_kwargs={"context": context},
    k=2, max_steps=4,
)
envs.action_space.seed(0)
obs, _ = envs.reset(seed=0)
assert envs.observation_space.contains(obs), obs
for _ in range(3):
    obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs), obs
    assert np.isfinite(reward).all(), reward
envs.close()
assert torch.get_num_threads() == threads, "building the dummy env changed the parent's threads"
print("ok", env_id, threads)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "env_id", ["trainenv/Digits-MLP-v0", "trainenv/CartPole-PPO-v0", "trainenv/TinyLM-v0"]
)
def test_async_make_vec_with_default_threads(env_id: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # Its own session, so a timeout kills the forked workers too (they would block forever).
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, env_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"make_vec(..., 'async') on {env_id} hung for {TIMEOUT_S} s:\n{output}")
    assert proc.returncode == 0, output
    assert f"ok {env_id}" in output, output
