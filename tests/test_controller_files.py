"""Controller folders: saved as JSON + safetensors, loaded without unpickling anything."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import trainenv  # noqa: F401  (registers the environments)
from agents.adversary import HELDOUT_SPLIT
from agents.controller_files import (
    PICKLE_FILE,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    UntrustedFileError,
    load_policy,
    save_policy,
    space_from_data,
    space_to_data,
)
from agents.evaluate import main as evaluate_main
from agents.train_controller import (
    CONFIG_FILE,
    PPO_DEFAULTS,
    ControllerConfig,
    load_controller,
    train_controller,
)

SMALL = {"k": 2, "max_steps": 12}


def config(agent_actions: str) -> ControllerConfig:
    return ControllerConfig(
        env_id="trainenv/Digits-MLP-v0", env_kwargs=SMALL, agent_actions=agent_actions
    )


def trained_like(env, seed: int) -> PPO:
    """A PPO controller with weights no fresh model has (as if trained)."""
    model = PPO("MlpPolicy", env, device="cpu", seed=seed, **PPO_DEFAULTS)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.policy.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    model.num_timesteps = 1234
    return model


@pytest.mark.parametrize("agent_actions", ["continuous", "discrete"])
def test_a_saved_controller_loads_back_acting_identically(tmp_path, agent_actions) -> None:
    env = config(agent_actions).make_env(HELDOUT_SPLIT)
    model = trained_like(env, seed=3)
    save_policy(model, tmp_path, PPO_DEFAULTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SETTINGS_FILE, WEIGHTS_FILE]

    loaded = load_controller(tmp_path, env).model
    assert loaded.num_timesteps == 1234 and loaded.n_steps == PPO_DEFAULTS["n_steps"]
    assert loaded.observation_space == env.observation_space
    assert loaded.action_space == env.action_space
    for name, tensor in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[name], tensor, rtol=0, atol=0)
    env.observation_space.seed(0)
    batch = np.stack([env.observation_space.sample() for _ in range(256)])
    expected, _ = model.predict(batch, deterministic=True)
    actions, _ = loaded.predict(batch, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    if agent_actions == "continuous":  # the weights matter: a fresh model acts otherwise
        fresh, _ = trained_like(env, seed=4).predict(batch, deterministic=True)
        assert not np.array_equal(fresh, expected)


def test_spaces_round_trip_as_plain_data() -> None:
    from gymnasium import spaces

    for space in (
        spaces.Box(-np.inf, np.inf, (3,), np.float32),
        spaces.Box(np.array([0.0, -1.0]), np.array([1.0, 2.0]), dtype=np.float64),
        spaces.Discrete(5, start=1),
        spaces.MultiDiscrete([3, 4]),
    ):
        data = json.loads(json.dumps(space_to_data(space)))
        assert space_from_data(data) == space
    with pytest.raises(ValueError, match="only Box, Discrete and MultiDiscrete"):
        space_to_data(spaces.Text(5))
    with pytest.raises(ValueError, match="type must be"):
        space_from_data({"type": "os.system"})


class _WritesMarker:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def crafted_model_zip(directory: Path, marker: Path) -> None:
    """A ``model.zip`` whose ``data`` entry runs code when stable-baselines3 loads it."""
    payload = base64.b64encode(pickle.dumps(_WritesMarker(marker))).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": payload}}
    with zipfile.ZipFile(directory / PICKLE_FILE, "w") as archive:
        archive.writestr("data", json.dumps(data))


def test_a_pickle_archive_is_refused_unless_trusted(tmp_path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "ctl"
    folder.mkdir()
    crafted_model_zip(folder, marker)
    with pytest.raises(UntrustedFileError, match="runs the code it carries.*trust_pickle=True"):
        load_policy(folder)
    assert not marker.exists()
    # The file is live: trusting it runs its code (then it fails to be a model).
    with pytest.raises(Exception):  # noqa: B017  (whatever SB3 makes of the rest)
        load_policy(folder, trust_pickle=True)
    assert marker.exists()


def test_the_evaluation_command_refuses_a_pickle_archive_in_one_line(tmp_path, capsys) -> None:
    marker = tmp_path / "marker"
    (tmp_path / CONFIG_FILE).write_text(config("discrete").model_dump_json())
    crafted_model_zip(tmp_path, marker)
    with pytest.raises(SystemExit) as exit_:
        evaluate_main([str(tmp_path), "--episodes", "1", "--no-rules"])
    assert exit_.value.code == 2 and not marker.exists()
    assert "--trust-pickle" in capsys.readouterr().err


def test_bad_controller_folders_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no controller here"):
        load_policy(tmp_path)
    env = config("discrete").make_env(HELDOUT_SPLIT)
    save_policy(trained_like(env, seed=0), tmp_path, PPO_DEFAULTS)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    for field, value, message in (
        ("algorithm", "os.system", "algorithm must be one of"),
        ("policy", "builtins.eval", "policy must be one of"),
        ("format", 99, "format must be 1"),
    ):
        (tmp_path / SETTINGS_FILE).write_text(json.dumps({**settings, field: value}))
        with pytest.raises(ValueError, match=message):
            load_policy(tmp_path)
    wider = {**settings["hyperparameters"], "policy_kwargs": {"net_arch": [8]}}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({**settings, "hyperparameters": wider}))
    with pytest.raises(ValueError, match="does not fit the policy"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="hyperparameters must be plain JSON"):
        save_policy(trained_like(env, seed=0), tmp_path, {"policy_kwargs": {"f": torch.nn.Tanh}})
    # Checked before training starts.
    with pytest.raises(ValueError, match="ppo_kwargs must be plain JSON"):
        train_controller(
            config("discrete"), 64, tmp_path / "new", ppo_kwargs={"learning_rate": lambda _: 0.1}
        )
    assert not (tmp_path / "new").exists()
