"""The trainer base classes: declarations, snapshots, divergence, seeds and threads, with a
minimal trainer written from the public names only."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainenv.core.knobs import GRAD_CLIP, LR_SCALE
from trainenv.core.telemetry import ChannelSpec, Telemetry
from trainenv.trainers.base import Snapshot, Trainer, TrainerSpec
from trainenv.trainers.supervised import SupervisedTrainer
from trainenv.trainers.torch import TORCH_EVENTS, TorchTrainer, clone_tree

LOSS = ChannelSpec("loss", "a number")


class Counter(Trainer):
    """A run that counts: its whole state is one integer."""

    def __init__(self, performance_range: tuple[float, float] = (0.0, 1.0)) -> None:
        self.range = performance_range
        super().__init__()

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(channels=(LOSS,), knobs=(LR_SCALE,), events=("bump",),
                           performance_range=self.range)  # fmt: skip

    def _reset(self, seed: int) -> None:
        self.count = 0

    def _advance(self, k: int) -> Telemetry:
        self.count += k
        return Telemetry(np.full((k, 1), float(self.count)))

    def _apply_event(self, name: str, magnitude: float) -> None:
        self.count += 100

    def evaluate(self) -> float:
        return 0.5

    def _state(self) -> int:
        return self.count

    def _load_state(self, state: int) -> None:
        self.count = state


def test_the_declaration_comes_from_one_hook_and_is_readable_by_name() -> None:
    trainer = Counter((-1.0, 2.0))
    assert trainer.channels == (LOSS,) and trainer.knob_specs == (LR_SCALE,)
    assert trainer.events == ("bump",) and trainer.performance_range == (-1.0, 2.0)
    assert trainer.spec.rng_streams == ("torch", "numpy", "python")
    assert trainer.knobs == {"lr_scale": 1.0} and trainer.targets == ("lr_scale", "bump")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"performance_range": (1.0, 1.0)}, "performance_range must be finite"),
        ({"performance_range": (0.0, math.inf)}, "performance_range must be finite"),
        ({"channels": (LOSS, LOSS)}, r"channels must have unique names; repeated: \['loss'\]"),
        ({"events": ("lr_scale",)}, "knobs and events must have unique names"),
        ({"rng_streams": ("jax",)}, r"unknown streams \['jax'\]"),
    ],
)
def test_a_bad_declaration_raises_naming_the_field(kwargs: dict, match: str) -> None:
    fields = {"channels": (LOSS,), "knobs": (LR_SCALE,), "performance_range": (0.0, 1.0)}
    with pytest.raises(ValueError, match=match):
        TrainerSpec(**{**fields, **kwargs})


def test_a_declaration_that_is_not_a_spec_is_a_type_error() -> None:
    class Broken(Counter):
        def _declare(self) -> TrainerSpec:
            return {"channels": (LOSS,)}  # type: ignore[return-value]

    with pytest.raises(TypeError, match="must return a TrainerSpec"):
        Broken()


def test_snapshot_wraps_the_base_state_around_the_subclass_state() -> None:
    trainer = Counter()
    trainer.reset(3)
    trainer.advance(2)
    trainer.set_knob("lr_scale", 5.0)
    noise = trainer.perturbation_rng("input_noise")
    snapshot = trainer.snapshot()
    expected_draw = noise.random()
    assert isinstance(snapshot, Snapshot) and snapshot.run == 2 and snapshot.updates == 2
    trainer.advance(4)
    trainer.reset_knob("lr_scale")
    for _ in range(2):  # a snapshot serves any number of restores
        trainer.restore(snapshot)
        assert (trainer.count, trainer.updates, trainer.knobs["lr_scale"]) == (2, 2, 5.0)
        assert trainer.perturbation_rng("input_noise").random() == expected_draw
    with pytest.raises(ValueError, match="snapshot must be a Snapshot"):
        trainer.restore({"run": 2})  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="call reset"):
        Counter().snapshot()


class Logistic(TorchTrainer):
    """Logistic regression on a fixed synthetic problem: the smallest TorchTrainer."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, generator=generator)
        self.y = (self.x.sum(1) > 0).float()
        super().__init__()

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(
            channels=(LOSS, ChannelSpec("grad_norm", "g"), ChannelSpec("update_ratio", "u"),
                      ChannelSpec("weight_norm", "w")),  # fmt: skip
            knobs=(LR_SCALE, GRAD_CLIP), events=TORCH_EVENTS, performance_range=(0.0, 1.0),
            rng_streams=("torch",),
        )  # fmt: skip

    def _build(self, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = torch.nn.Linear(3, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.5)

    def _update(self, number: int) -> list[float]:
        idx = torch.randint(64, (16,))
        logits = self._model()(self.x[idx]).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.y[idx])
        grad_norm = self._optimizer_step(loss, 0.5 * self.knobs["lr_scale"])
        return [loss.item(), grad_norm, *reversed(self._weight_change())]

    def evaluate(self) -> float:
        with torch.no_grad():
            return float(((self._model()(self.x).squeeze(1) > 0).float() == self.y).float().mean())


def test_a_torch_trainer_learns_forks_and_restores_bit_for_bit() -> None:
    trainer = Logistic()
    trainer.reset(0)
    first = trainer.advance(20).values
    assert first[-1, 0] < first[0, 0] and trainer.evaluate() > 0.8
    assert (first[:, 2] > 0).all() and np.isclose(first[-1, 3], float(
        torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).norm()))  # fmt: skip
    fork, snapshot = trainer.fork(), trainer.snapshot()
    trainer.apply_event("weight_noise", 0.5)
    trainer.set_knob("grad_clip", 1e-3)
    after_event = trainer.advance(1).values[0]
    assert after_event[2] < 1e-2  # the ratio measures the update, not the event's jump
    original = fork.advance(5).values
    trainer.restore(snapshot)
    np.testing.assert_array_equal(trainer.advance(5).values, original)
    with pytest.raises(RuntimeError, match="call reset"):
        Logistic().snapshot()


class Stream(Trainer):
    """A run that emits planted rows through the base's update loop."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = rows
        super().__init__()

    def _declare(self) -> TrainerSpec:
        ratio = ChannelSpec("ratio", "undefined at times", diverges_if_nonfinite=False)
        return TrainerSpec(channels=(LOSS, ratio), performance_range=(0.0, 1.0))

    def _reset(self, seed: int) -> None:
        pass

    def _update(self, number: int) -> list[float]:
        return self.rows[number - 1]

    def _apply_event(self, name: str, magnitude: float) -> None:
        pass

    def evaluate(self) -> float:
        return 0.0

    def _state(self) -> None:
        return None

    def _load_state(self, state: None) -> None:
        pass


def test_only_channels_declared_divergent_end_advance_when_non_finite() -> None:
    trainer = Stream([[1.0, math.nan], [2.0, math.inf], [math.inf, 0.0], [3.0, 0.0]])
    trainer.reset(0)
    telemetry = trainer.advance(4)
    assert telemetry.diverged and len(telemetry.values) == 3 and trainer.updates == 3
    assert trainer.channel_names == ("loss", "ratio")


class _PlantedSupervised(SupervisedTrainer):
    """Digits MLP whose telemetry shows ``value`` in ``channel`` from the 3rd update on."""

    def __init__(self, channel: str, value: float) -> None:
        super().__init__()
        self.column, self.value = self.channel_names.index(channel), value

    def _update(self, number: int) -> list[float]:
        row = super()._update(number)
        if number >= 3:
            row[self.column] = self.value
        return row


@pytest.mark.parametrize("channel", ["grad_norm", "val_loss", "update_ratio"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_an_infinite_grad_norm_or_val_loss_is_a_non_finite_collapse(
    channel: str, value: float
) -> None:
    trainer = _PlantedSupervised(channel, value)
    trainer.reset(0)
    telemetry = trainer.advance(10)
    assert telemetry.diverged and len(telemetry.values) == 3


@pytest.mark.slow  # calibrates, audits 8 paired runs and forks: ~7 s of CPU
def test_the_custom_trainer_example_calibrates_audits_and_forks(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "custom_trainer.py"
    spec = importlib.util.spec_from_file_location("custom_trainer", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(tmp_path)
    assert result["encoder_components"] >= 1 and result["fork"] is True
    assert result["runs"] == 2 * 2 * 2 + 2  # interventions x magnitudes x seeds, + unperturbed


def test_a_user_trainer_needs_only_names_exported_by_trainenv_trainers() -> None:
    import trainenv.trainers as public

    needed = {"Trainer", "TorchTrainer", "TrainerSpec", "Snapshot", "ChannelSpec", "Telemetry",
              "KnobSpec", "TORCH_EVENTS", "LR_SCALE", "GRAD_CLIP", "clone_tree",
              "check_positive_int"}  # fmt: skip
    assert needed <= set(public.__all__)
    assert all(getattr(public, name) is not None for name in public.__all__)


def test_a_trainer_runs_on_its_own_thread_count_and_restores_the_callers() -> None:
    seen: list[int] = []

    class Spy(Logistic):
        def _build(self, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
            seen.append(torch.get_num_threads())
            return super()._build(seed)

        def _update(self, number: int) -> list[float]:
            seen.append(torch.get_num_threads())
            return super()._update(number)

    outer = torch.get_num_threads()
    trainer = Spy()
    assert trainer.num_threads == 1 and SupervisedTrainer(num_threads=None).num_threads is None
    trainer.num_threads = 2
    torch.set_num_threads(3)
    try:
        trainer.reset(0)
        trainer.advance(2)
        assert seen == [2, 2, 2] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(outer)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be an integer >= 1"):
            trainer.num_threads = bad  # type: ignore[assignment]


HUGE_SEEDS = [2**32, 2**64, 2**100]


def _lm() -> Trainer:
    from trainenv.trainers.lm import CausalLMTrainer

    return CausalLMTrainer(batch_size=2, seq_len=8, eval_every=2, eval_batches=1, warmup=2)


def _ppo() -> Trainer:
    from trainenv.trainers.sb3 import SB3Trainer

    kwargs = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}
    return SB3Trainer("PPO", n_envs=2, algo_kwargs=kwargs)


@pytest.mark.parametrize("make", [SupervisedTrainer, _lm, _ppo], ids=["mlp", "lm", "ppo"])
def test_any_non_negative_seed_works_and_seeds_stay_distinct(make: Any) -> None:
    trainer = make()
    runs = {}
    for seed in (0, *HUGE_SEEDS):
        trainer.reset(seed)
        runs[seed] = trainer.advance(2).values
        assert np.isfinite(runs[seed]).all() and trainer.seed == seed
    trainer.reset(2**100)
    np.testing.assert_array_equal(trainer.advance(2).values, runs[2**100])
    distinct = {values.tobytes() for values in runs.values()}
    assert len(distinct) == len(runs)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None, np.float64(2.0)])
def test_a_reset_with_a_bad_seed_raises_and_leaves_the_run_as_it_was(bad: Any) -> None:
    trainer = SupervisedTrainer()
    trainer.reset(3)
    trainer.advance(4)
    trainer.set_knob("lr_scale", 2.0)
    before = (trainer.seed, trainer.updates, trainer.knobs, clone_tree(trainer.model.state_dict()))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        trainer.reset(bad)
    assert (trainer.seed, trainer.updates, trainer.knobs) == before[:3]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, before[3][name])
    trainer.advance(1)  # still a working run
