"""Small shared helpers for the test-suite."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from trainenv.env import TrainEnv

OUTCOME_COLUMNS = [
    "kind",
    "intervention",
    "magnitude",
    "seed",
    "drawdown",
    "recovery_time",
    "collapsed",
    "area",
    "final_gap",
    "collapse_reason",
]
"""The columns of an audit's runs table that two runs of the same plan must agree on."""


def rollout(env: TrainEnv, actions: list[Any], seed: int | None = None) -> list[tuple]:
    """Step ``env`` through ``actions`` (resetting first if ``seed`` is given); return per step
    ``(obs, reward, terminated, truncated, telemetry row)``, stopping at episode end."""
    if seed is not None:
        env.reset(seed=seed)
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, truncated, tuple(info["telemetry"].values())))
        if terminated or truncated:
            break
    return out


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    """Bit-identical trajectories (NaN equal to NaN)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The pipe tables of Markdown ``text``: rows of cell texts without ``**`` and backticks."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("| ") and not re.fullmatch(r"\|( -+ \|)+", line):
            if not previous.startswith("| "):
                tables.append([])
            cells = line.strip().strip("|").split(" | ")
            tables[-1].append([re.sub(r"\*\*|`", "", c).strip() for c in cells])
        previous = line
    return tables
