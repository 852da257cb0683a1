"""Controller folders that load without running code: settings as JSON, weights as safetensors.

A stable-baselines3 ``model.zip`` is a pickle archive: ``PPO.load`` unpickles its entries, and a
crafted file runs whatever code it carries. A controller folder holds instead:

- ``policy.json``: the algorithm's name, the policy's name, the algorithm's settings (plain
  JSON data, ``policy_kwargs`` among them), the observation and action spaces as plain data,
  the timesteps trained;
- ``policy.safetensors``: the policy's weights (tensors and nothing else; no optimizer state,
  so training a loaded model further starts a fresh optimizer).

:func:`load_policy` rebuilds the model from the settings and loads the weights into its
policy. It refuses a folder that has only a pickle archive unless the caller says it trusts
the file (``trust_pickle=True``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from safetensors.torch import load_model, save_model
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

SETTINGS_FILE, WEIGHTS_FILE, PICKLE_FILE = "policy.json", "policy.safetensors", "model.zip"
FORMAT = 1  # the version of policy.json's layout
ALGORITHMS: dict[str, type[OnPolicyAlgorithm]] = {"A2C": A2C, "PPO": PPO}
"""The algorithms a folder may name (looked up by name: nothing in the file is imported)."""


class UntrustedFileError(ValueError):
    """A controller folder holds only a pickle archive, and the caller did not trust it."""


def check_plain(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is plain JSON data (numbers,
    strings, booleans, ``None``, lists and string-keyed dicts of them)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be plain JSON data (numbers, strings, lists, dicts) so the controller "
            f"can be saved without pickle: {error}"
        ) from None


def space_to_data(space: spaces.Space[Any]) -> dict[str, Any]:
    """A ``Box``, ``Discrete`` or ``MultiDiscrete`` space as plain data (:func:`space_from_data`
    reverses it)."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box", "low": space.low.tolist(), "high": space.high.tolist(),
            "shape": list(space.shape), "dtype": str(space.dtype),
        }  # fmt: skip
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    raise ValueError(f"space: only Box, Discrete and MultiDiscrete are saved, got {space}")


def space_from_data(data: Mapping[str, Any]) -> spaces.Space[Any]:
    """The space :func:`space_to_data` described."""
    kind = data.get("type")
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        if dtype.kind not in "fiu":
            raise ValueError(f"space: a Box's dtype must be numeric, got {dtype}")
        low, high = np.asarray(data["low"], dtype), np.asarray(data["high"], dtype)
        return spaces.Box(low, high, tuple(data["shape"]), dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data["start"]))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(data["nvec"]), start=np.asarray(data["start"]))
    raise ValueError(f"space: type must be Box, Discrete or MultiDiscrete, got {kind!r}")


def save_policy(
    model: OnPolicyAlgorithm, directory: str | Path, hyperparameters: Mapping[str, Any]
) -> None:
    """Write ``model`` as ``policy.json`` and ``policy.safetensors`` under ``directory``.

    Args:
        model: A trained model of one of :data:`ALGORITHMS`, with one of its named policies.
        directory: The controller folder (created if missing).
        hyperparameters: The keyword arguments the algorithm was built with besides the
            policy, env, seed and device (e.g. ``n_steps``, ``policy_kwargs``): plain data.
    """
    algorithm = type(model).__name__
    if ALGORITHMS.get(algorithm) is not type(model):
        raise ValueError(f"model: algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm}")
    names = {cls: name for name, cls in model.policy_aliases.items()}
    if type(model.policy) not in names:
        raise ValueError(
            f"model: its policy must be one of {sorted(model.policy_aliases)}, "
            f"got {type(model.policy).__name__}"
        )
    check_plain("hyperparameters", dict(hyperparameters))
    settings = {
        "format": FORMAT,
        "algorithm": algorithm,
        "policy": names[type(model.policy)],
        "hyperparameters": dict(hyperparameters),
        "observation_space": space_to_data(model.observation_space),
        "action_space": space_to_data(model.action_space),
        "num_timesteps": int(model.num_timesteps),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    save_model(model.policy, str(directory / WEIGHTS_FILE))  # handles tensors shared by modules


def load_policy(directory: str | Path, *, trust_pickle: bool = False) -> OnPolicyAlgorithm:
    """The model saved by :func:`save_policy` in ``directory``, on the CPU, without an env.

    Args:
        directory: The controller folder.
        trust_pickle: Load a folder that has only a stable-baselines3 ``model.zip`` (written
            by older versions) with ``load``, which runs any code the file carries. Pass it
            only for a file you made yourself or got from someone you trust.
    """
    directory = Path(directory)
    if not (directory / SETTINGS_FILE).exists() or not (directory / WEIGHTS_FILE).exists():
        if not (directory / PICKLE_FILE).exists():
            raise FileNotFoundError(
                f"{directory}: no controller here (need {SETTINGS_FILE} and {WEIGHTS_FILE})"
            )
        if not trust_pickle:
            raise UntrustedFileError(
                f"{directory / PICKLE_FILE} is a pickle archive, and unpickling a crafted file "
                f"runs the code it carries; a safe controller folder has {SETTINGS_FILE} and "
                f"{WEIGHTS_FILE}. Load it only if you trust where it came from: "
                f"trust_pickle=True (--trust-pickle on the command line); then save it again "
                f"with agents.controller_files.save_policy"
            )
        return PPO.load(directory / PICKLE_FILE, device="cpu")
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    if settings.get("format") != FORMAT:
        raise ValueError(f"{SETTINGS_FILE}: format must be {FORMAT}, got {settings.get('format')}")
    algorithm = settings["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"{SETTINGS_FILE}: algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}"
        )
    cls = ALGORITHMS[algorithm]
    if not isinstance(settings.get("policy"), str) or settings["policy"] not in cls.policy_aliases:
        raise ValueError(
            f"{SETTINGS_FILE}: policy must be one of {sorted(cls.policy_aliases)}, "
            f"got {settings.get('policy')!r}"
        )
    # What SB3's own load does, with the settings from JSON: build without an env, set the
    # spaces (SB3's type hints do not admit env=None, its load passes it), then set the model up
    # (its policy included) and fill the policy's weights.
    model = cls(
        policy=settings["policy"], env=None,  # type: ignore[arg-type]
        device="cpu", _init_setup_model=False, **settings["hyperparameters"],
    )  # fmt: skip
    model.observation_space = space_from_data(settings["observation_space"])
    model.action_space = space_from_data(settings["action_space"])
    model.n_envs = 1
    model._setup_model()
    try:
        load_model(model.policy, str(directory / WEIGHTS_FILE), strict=True, device="cpu")
    except RuntimeError as error:
        raise ValueError(
            f"{WEIGHTS_FILE} does not fit the policy {SETTINGS_FILE} describes: {error}"
        ) from None
    model.num_timesteps = int(settings["num_timesteps"])
    return model
