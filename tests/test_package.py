"""Package-level promises: a light import, registration, gymnasium's module:id form."""

from __future__ import annotations

import subprocess
import sys

import pytest

import trainenv


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()  # fmt: skip


def test_import_registers_specs_without_loading_torch_or_building_anything() -> None:
    out = run_python(
        "import sys, gymnasium as gym, trainenv;"
        "print('torch' in sys.modules, 'sklearn' in sys.modules,"
        " all(i in gym.registry for i in trainenv.ENV_IDS))"
    )
    assert out == "False False True"


@pytest.mark.slow  # a fresh interpreter importing torch: ~5-10 s
def test_gymnasium_module_prefix_imports_trainenv_itself() -> None:
    out = run_python(
        "import gymnasium as gym; env = gym.make('trainenv:trainenv/Digits-MLP-v0', max_steps=2);"
        "print(env.reset(seed=0)[0].shape)"
    )
    assert out.startswith("(")


def test_public_names_resolve_lazily() -> None:
    assert trainenv.TrainEnv.__name__ == "TrainEnv"
    assert callable(trainenv.calibrate)
