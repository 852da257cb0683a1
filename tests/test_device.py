"""``device=`` on the torch-based trainers and ``SB3Trainer``: validation, and runs, forks and
snapshots on the device. These run on the CPU (``device="cpu"`` explicitly); the CUDA test runs
only where CUDA is present (``benchmarks/gpu_check.py`` measures speed there)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from trainenv.core.rng import RunRng
from trainenv.trainers import TORCH_EVENTS, ChannelSpec, TorchTrainer, Trainer, TrainerSpec
from trainenv.trainers.lm import CausalLMTrainer
from trainenv.trainers.sb3 import SB3Trainer
from trainenv.trainers.supervised import SupervisedTrainer
from trainenv.trainers.torch import check_device, device_streams

LM_TINY = {"batch_size": 4, "seq_len": 16, "eval_every": 2, "eval_batches": 1, "warmup": 4,
           "model_config": {"n_layer": 1, "n_embd": 16, "n_head": 2}}  # fmt: skip
A2C_TINY = {"algo_kwargs": {"n_steps": 8, "policy_kwargs": {"net_arch": [16]}}}


class Line(TorchTrainer):
    """A user's torch trainer: a linear fit of y = 2x, given only ``device`` by the caller."""

    def __init__(self, device: str = "cpu") -> None:
        self.x = torch.linspace(-1, 1, 16, device=check_device(device))[:, None]
        super().__init__(device=device)

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(channels=(ChannelSpec("loss", "squared error"),),
                           events=TORCH_EVENTS, performance_range=(-10.0, 0.0))  # fmt: skip

    def _build(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = nn.Linear(1, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def _update(self, number: int) -> list[float]:
        loss = (self._model()(self.x) - 2 * self.x).pow(2).mean()
        self._loss = float(loss)
        self._optimizer_step(loss, 0.1)
        return [self._loss]

    def evaluate(self) -> float:
        return -getattr(self, "_loss", 1.0)


BUILDERS: dict[str, Callable[..., Trainer]] = {
    "TorchTrainer": Line,
    "SupervisedTrainer": lambda **kw: SupervisedTrainer(hidden=(16,), **kw),
    "CausalLMTrainer": lambda **kw: CausalLMTrainer(**LM_TINY, **kw),
    "SB3Trainer": lambda **kw: SB3Trainer("A2C", **A2C_TINY, **kw),
}


@pytest.fixture(params=list(BUILDERS))
def build(request: pytest.FixtureRequest) -> Callable[..., Trainer]:
    return BUILDERS[request.param]


def _parameters(trainer: Any) -> list[torch.Tensor]:
    model = trainer.model
    return list((model.policy if isinstance(trainer, SB3Trainer) else model).parameters())


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", "mps", 3])
def test_an_unknown_device_is_a_value_error_naming_the_field(
    build: Callable[..., Trainer], device: Any
) -> None:
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        build(device=device)


def test_cuda_without_cuda_is_a_value_error_saying_so(
    build: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available here"):
        build(device="cuda")


def test_sb3_device_and_algo_kwargs_device_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SB3Trainer("A2C", algo_kwargs={"device": "cpu"}).device == torch.device("cpu")
    auto = SB3Trainer("A2C", algo_kwargs={"device": "auto"})  # SB3's word: CUDA where present
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # checked, never used
    with pytest.raises(ValueError, match=r"device 'cpu' disagrees with algo_kwargs\['device'\]"):
        SB3Trainer("A2C", algo_kwargs={"device": "cuda"}, device="cpu")


def test_a_run_on_cuda_owns_the_cuda_generators() -> None:
    assert device_streams(("torch",), torch.device("cuda")) == ("torch", "cuda")
    assert device_streams(("torch",), torch.device("cpu")) == ("torch",)
    spec = TrainerSpec(channels=(), performance_range=(0, 1), rng_streams=("torch", "cuda"))
    assert spec.rng_streams == ("torch", "cuda")
    if not torch.cuda.is_available():  # with no device the stream is empty, and harmless
        with RunRng(0, ("cuda",)).active():
            pass


# -- runs on the device -------------------------------------------------------------------------
def test_device_cpu_is_the_default_run_bit_for_bit_and_forks_on_it(
    build: Callable[..., Trainer],
) -> None:
    default, explicit = build(), build(device="cpu")
    assert explicit.device == torch.device("cpu")  # type: ignore[attr-defined]
    for trainer in (default, explicit):
        trainer.reset(3)
    np.testing.assert_array_equal(explicit.advance(4).values, default.advance(4).values)
    assert all(p.device.type == "cpu" for p in _parameters(explicit))
    snapshot, fork = explicit.snapshot(), explicit.fork()
    ahead = explicit.advance(3).values
    np.testing.assert_array_equal(fork.advance(3).values, ahead)
    explicit.restore(snapshot)
    np.testing.assert_array_equal(explicit.advance(3).values, ahead)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_on_cuda_forks_and_interleaved_runs_reproduce_with_dropout() -> None:
    def lm() -> CausalLMTrainer:
        return CausalLMTrainer(**{**LM_TINY, "dropout": 0.1}, device="cuda")

    a, b = lm(), lm()
    a.reset(1)
    alone = a.advance(6).values
    a.reset(1)
    b.reset(2)
    fork = None
    together = []
    for i in range(6):
        together.append(a.advance(1).values)
        b.advance(1)
        torch.rand(3, device="cuda")  # other work on the device in between
        if i == 2:
            fork = a.fork()
    np.testing.assert_array_equal(np.concatenate(together), alone)
    assert fork is not None and next(fork.model.parameters()).is_cuda  # type: ignore[union-attr]
    np.testing.assert_array_equal(fork.advance(3).values, alone[3:])


def test_the_gpu_check_says_plainly_when_there_is_no_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    assert module.main() == 0
    assert "no CUDA device here" in capsys.readouterr().out
