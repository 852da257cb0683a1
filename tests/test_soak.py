"""Soak: 5,000 fuzzed steps across the three original registered environments (issue 12).

A seeded generator drives every environment in both action modes through random valid
actions (``action_space.sample()``) and extreme ones (each intervention at its highest
magnitude; in continuous mode also all of them at once), forks (continued on sometimes),
pickling round trips, and resets with huge seeds. Valid actions must never raise, and every
observation must be finite and inside the observation space, every reward finite. Steps are
spread by cost: a CartPole-PPO update (a 256-step rollout and 20 epochs) costs about 30 of
Digits-MLP's, a TinyLM update about 5.
"""

from __future__ import annotations

import math
import pickle
import time
import traceback
import warnings
from collections import Counter
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import pytest

import trainenv  # noqa: F401  (registers the ids)
from trainenv.core.actions import ContinuousMagnitudes, DiscreteMenu
from trainenv.env import TrainEnv

STEPS = {"trainenv/Digits-MLP-v0": 4100, "trainenv/TinyLM-v0": 600, "trainenv/CartPole-PPO-v0": 300}
MODES = ("discrete", "continuous")
# One update a step and short episodes: cheap steps, many episodes (resets, collapses).
ENV_KWARGS: dict[str, Any] = {"k": 1, "max_steps": 20}
HUGE_SEEDS = {2**64: "2**64", 2**100: "2**100", 0: "0"}  # seed -> how it is reported
# Every (env, mode) opens with each operation once, then draws them at these rates per step.
OPENING = ("reset", "fork_continue", "pickle", "reset", "fork_discard", "reset")
RATES = {"reset": 0.03, "fork": 0.03, "pickle": 0.02}
EXTREME_SHARE = 0.25  # of the actions


def extreme_actions(env: TrainEnv) -> list[Any]:
    """Each intervention alone at its highest magnitude; in continuous mode all at once too."""
    spec = env.action_spec
    if isinstance(spec, DiscreteMenu):
        return [spec.encode({i.name: i.high}) for i in spec.interventions]
    assert isinstance(spec, ContinuousMagnitudes)
    n = len(spec.interventions)
    return [np.ones(n, np.float32), *np.eye(n, dtype=np.float32)]


class Soak:
    """Drives one environment, counting what it did and what went wrong."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def check(
        self, where: str, env: gymnasium.Env[Any, Any], obs: Any, reward: SupportsFloat
    ) -> None:
        if not np.isfinite(obs).all():
            self.failures.append(f"{where}: non-finite observation {obs}")
        elif not env.observation_space.contains(obs):
            self.failures.append(f"{where}: observation {obs} outside {env.observation_space}")
        if not math.isfinite(float(reward)):
            self.failures.append(f"{where}: reward {reward}")

    def reset(self, where: str, env: gymnasium.Env[Any, Any], seed: int | None) -> None:
        obs, _ = env.reset(seed=seed)
        self.counts["resets"] += 1
        self.check(f"{where} reset(seed={seed})", env, obs, 0.0)

    def step(self, where: str, env: gymnasium.Env[Any, Any], action: Any) -> bool:
        """One step; whether the episode is still running."""
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        except Exception:
            self.failures.append(f"{where} action {action!r}:\n{traceback.format_exc()}")
            return False
        self.counts["steps"] += 1
        self.check(f"{where} action {action!r}", env, obs, reward)
        if terminated:
            self.counts["collapses"] += 1
            self.counts[f"collapses ({info['collapse']})"] += 1
        return not (terminated or truncated)

    def run(self, env_id: str, mode: str, n_steps: int) -> None:
        rng = self.rng
        env: gymnasium.Env[Any, Any] = gymnasium.make(env_id, action_mode=mode, **ENV_KWARGS)
        env.action_space.seed(int(rng.integers(2**32)))
        extremes = extreme_actions(env.unwrapped)  # type: ignore[arg-type]
        self.reset(f"{env_id} {mode}", env, int(rng.integers(2**63)))
        for i in range(n_steps):
            where = f"{env_id} {mode} step {i}"
            op = OPENING[i] if i < len(OPENING) else self._draw()
            if op == "reset":
                seed = list(HUGE_SEEDS)[int(rng.integers(len(HUGE_SEEDS)))]
                self.counts[f"resets with seed {HUGE_SEEDS[seed]}"] += 1
                self.reset(where, env, seed)
            elif op == "pickle":
                env = pickle.loads(pickle.dumps(env))
                self.counts["pickles"] += 1
            target = env
            if op.startswith("fork"):
                target = env.unwrapped.fork()  # type: ignore[attr-defined]
                self.counts["forks"] += 1
                if op == "fork_continue":
                    env = target
                    self.counts["forks continued on"] += 1
            if rng.random() < EXTREME_SHARE:
                action = extremes[int(rng.integers(len(extremes)))]
                self.counts["extreme actions"] += 1
            else:
                action = env.action_space.sample()
            running = self.step(where, target, action)
            if target is env and not running:
                self.reset(where, env, None if rng.random() < 0.5 else int(rng.integers(2**63)))
        env.close()

    def _draw(self) -> str:
        u = self.rng.random()
        if u < RATES["reset"]:
            return "reset"
        u -= RATES["reset"]
        if u < RATES["fork"]:
            return "fork_continue" if self.rng.random() < 0.5 else "fork_discard"
        u -= RATES["fork"]
        return "pickle" if u < RATES["pickle"] else "step"


@pytest.mark.slow
def test_soak_fuzzed_steps(capsys: pytest.CaptureFixture[str]) -> None:
    soak = Soak(np.random.default_rng(20260))
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for env_id, n_steps in STEPS.items():
            for mode in MODES:
                began = time.perf_counter()
                soak.run(env_id, mode, n_steps // len(MODES))
                seconds[f"{env_id} {mode}"] = round(time.perf_counter() - began, 1)
    elapsed = time.perf_counter() - start
    said = Counter(f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught)
    with capsys.disabled():
        print(f"\nsoak: {dict(sorted(soak.counts.items()))} in {elapsed:.0f} s")
        print(f"soak seconds: {seconds}")
        for message, n in said.most_common(5):
            print(f"soak warning x{n}: {message}")
    assert not soak.failures, f"{len(soak.failures)} failures; first:\n" + "\n".join(
        soak.failures[:3]
    )
    assert soak.counts["steps"] == sum(STEPS.values())
