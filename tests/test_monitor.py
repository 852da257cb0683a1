"""trainenv.monitor: the framework-free StabilityMonitor, live calibration, acting, the event
table, and the transformers and stable-baselines3 adapters on planted learning-rate blow-ups
(tiny GPT-2 built from a config, CartPole PPO; no downloads)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from agents import BackoffAndRollbackOnAlarm
from trainenv.core.collapse import CollapseRule, CollapseState
from trainenv.monitor import (
    DETECTORS,
    MONITOR_SCHEMA,
    Actor,
    EventLog,
    StabilityMonitor,
    alarm_rate,
)

RATE = 0.02  # the monitor's false-alarm rate in these tests


def synthetic_run(seed: int, length: int = 400, onset: int | None = None) -> list[dict]:
    """Loss falling to a plateau with noise, grad norm around 1; from ``onset`` the loss and
    the gradient blow up (a learning-rate blow-up's signature)."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(length):
        loss = 3 * math.exp(-t / 80) + 1 + 0.05 * rng.standard_normal()
        grad = 1 + 0.1 * rng.standard_normal()
        if onset is not None and t >= onset:
            loss *= 1 + 0.3 * (t - onset + 1)
            grad *= 20
        rows.append({"loss": loss, "grad_norm": grad, "lr": 1e-3})
    return rows


def feed(monitor: StabilityMonitor, rows: Sequence[Mapping[str, float]]) -> list:
    return [alarm for row in rows for alarm in monitor.observe(row)]


def collapse_update(performance: Sequence[tuple[int, float]], rule: CollapseRule) -> int | None:
    """The update at which ``rule`` fires on normalised performance ``[(update, p)]``."""
    state = CollapseState()
    for update, p in performance:
        state, reason = rule.update(state, p, not math.isfinite(p))
        if reason is not None:
            return update
    return None


# -- the monitor ---------------------------------------------------------------------------------
def test_the_detector_table_is_the_early_warning_evaluations() -> None:
    from trainenv.warning import DETECTORS as EVALUATED

    assert {n: (f, i) for n, (f, i) in DETECTORS.items()} == dict(EVALUATED)


def test_live_calibration_then_alarms_on_a_blow_up_and_not_before() -> None:
    monitor = StabilityMonitor(["loss", "grad_norm", "lr"], calibration_updates=64,
                               false_alarm_rate=RATE)  # fmt: skip
    alarms = feed(monitor, synthetic_run(0, onset=300))
    assert monitor.encoder is not None  # fitted live on the first 64 updates
    assert all(a.update > 64 for a in alarms)  # none while calibrating
    assert min(a.update for a in alarms if a.update > 300) == 301  # the first blown-up update
    assert alarm_rate([a for a in alarms if a.update <= 300], 300) <= RATE
    assert {a.detector for a in alarms if a.update > 300} >= {"loss spike", "grad-norm z-score"}
    for name, detector in monitor.detectors.items():  # calibrated, never below the default
        assert detector.threshold >= DETECTORS[name][0]().threshold


def test_calibration_from_reference_runs_adds_the_band_and_alarms_from_the_start() -> None:
    monitor = StabilityMonitor(["loss", "grad_norm", "lr"], false_alarm_rate=RATE)
    monitor.calibrate([synthetic_run(seed) for seed in range(1, 5)])
    assert monitor.encoder is not None and monitor.encoder.band_ is not None
    assert "meta-state deviation" in monitor.detectors
    assert not monitor.calibrating
    alarms = feed(monitor, synthetic_run(9, onset=150))
    assert alarm_rate([a for a in alarms if a.update <= 150], 150) <= 2 * RATE
    assert min(a.update for a in alarms if a.update > 150) == 151
    assert monitor.deviation is not None and monitor.deviation > 4.0


def test_an_encoder_that_does_not_fit_falls_back_to_the_self_referenced_deviation() -> None:
    from trainenv.core.metastate import MetaStateEncoder

    other = MetaStateEncoder(["val_loss", "grad_norm"], window=8)
    other.fit(np.random.default_rng(0).normal(size=(20, 6)))
    with pytest.warns(UserWarning, match="val_loss"):
        monitor = StabilityMonitor(["loss", "grad_norm"], encoder=other)
    assert monitor.encoder is None and "self-deviation" in monitor.detectors


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"channels": []}, "channels"),
        ({"channels": ["loss"], "false_alarm_rate": 1.5}, "false_alarm_rate"),
        ({"channels": ["loss"], "detectors": ["nope"]}, "detectors"),
        ({"channels": ["lr"], "detectors": ["loss spike"]}, "detectors"),
        ({"channels": ["loss"], "calibration_updates": -1}, "calibration_updates"),
        ({"channels": ["loss"], "thresholds": {"grad-norm z-score": 1.0}}, "thresholds"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        StabilityMonitor(**kwargs)


def test_a_row_without_a_channel_is_named() -> None:
    monitor = StabilityMonitor(["loss", "grad_norm"])
    with pytest.raises(ValueError, match="grad_norm"):
        monitor.observe({"loss": 1.0})


def test_a_non_finite_value_alarms() -> None:
    monitor = StabilityMonitor(["loss", "grad_norm", "lr"], calibration_updates=32)
    feed(monitor, synthetic_run(0, length=100))
    alarms = monitor.observe({"loss": math.nan, "grad_norm": 1.0, "lr": 1e-3})
    assert any(a.detector == "loss spike" and a.score == math.inf for a in alarms)


# -- acting ----------------------------------------------------------------------------------------
class FakeRun:
    """A live run of one number: snapshot/restore copy it; knobs are recorded."""

    def __init__(self) -> None:
        self.weights = 0.0
        self.knobs: dict[str, float] = {}

    def set_knob(self, name: str, value: float) -> None:
        self.knobs[name] = value

    def snapshot(self) -> float:
        return self.weights

    def restore(self, snapshot: float) -> None:
        self.weights = snapshot


def test_the_actor_backs_off_rolls_back_to_a_good_checkpoint_and_logs() -> None:
    monitor = StabilityMonitor(["loss", "grad_norm", "lr"], calibration_updates=64)
    actor = Actor(BackoffAndRollbackOnAlarm(), duration=20, checkpoint_every=10)
    run = FakeRun()
    actions, weights = [], {}
    for row in synthetic_run(0, length=320, onset=300):
        run.weights += 1  # one update
        weights[monitor.updates + 1] = run.weights
        alarms = monitor.observe(row)
        actions += actor.step(run, monitor, alarms, row)
        weights[f"after {monitor.updates}"] = run.weights
    at_onset = [a for a in actions if a.update == 301]
    assert [(a.name, a.magnitude) for a in at_onset] == [("lr_backoff", 0.01), ("rollback", 1.0)]
    # The good checkpoint predates the alarm by a quiet stretch: at most 300 - 10 updates in.
    assert at_onset[1].detail is not None and 200 <= at_onset[1].detail <= 290
    assert weights["after 301"] == weights[at_onset[1].detail]  # the run restored
    assert run.knobs["lr_backoff"] == 0.01
    assert actor.actions == actions and all(a.alarms for a in actions)


def test_a_policy_outside_the_stabilizers_or_their_range_is_named() -> None:
    class Shock:
        def reset(self) -> None: ...

        def act(self, obs: Any, info: Mapping[str, Any]) -> dict[str, float]:
            return {"lr_shock": 10.0} if info["updates"] == 3 else {"lr_backoff": 2.0}

    monitor = StabilityMonitor(["loss"], detectors=["loss spike"], calibration_updates=0)
    actor = Actor(Shock())
    row = {"loss": 1.0}
    with pytest.raises(ValueError, match=r"lr_backoff.*\[0.01, 0.5\]"):
        actor.step(FakeRun(), monitor, monitor.observe(row), row)


def test_an_environment_action_is_decoded_with_its_spec() -> None:
    from trainenv.core import interventions
    from trainenv.core.actions import DiscreteMenu

    spec = DiscreteMenu([interventions.get(n) for n in ("grad_clip", "rollback")], levels=2)

    class MenuPolicy:  # answers like a controller built for a trainenv environment
        def reset(self) -> None: ...

        def act(self, obs: Any, info: Mapping[str, Any]) -> int:
            return spec.index("grad_clip", 0.05)

    monitor = StabilityMonitor(["loss"], detectors=["loss spike"], calibration_updates=0)
    run = FakeRun()
    row = {"loss": 1.0}
    (action,) = Actor(MenuPolicy(), action_spec=spec).step(run, monitor, monitor.observe(row), row)
    assert (action.name, action.magnitude, run.knobs["grad_clip"]) == ("grad_clip", 0.05, 0.05)


def test_the_event_table_has_the_declared_schema(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    from trainenv.monitor import Action, Alarm

    log = EventLog(tmp_path / "monitor", "run-1")
    row = {"loss": 2.0, "grad_norm": 9.0}
    log.alarms([Alarm(5, "loss spike", "loss", 3.0, 0.5)], row, None, 4.0)
    log.actions([Action(5, "rollback", 1.0, ("loss spike",), 0)], row)
    table = pq.read_table(log.flush())
    assert table.schema.equals(MONITOR_SCHEMA)
    frame = table.to_pandas()
    assert list(frame["kind"]) == ["alarm", "action"]
    assert frame.loc[1, "checkpoint_update"] == 0 and dict(frame.loc[0, "telemetry"]) == row
    with pytest.raises(ValueError, match="run_id"):
        EventLog(tmp_path, "a/b")


# -- the adapters' weight norms and the callback's telemetry --------------------------------------
def flat64(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The straightforward reference: every weight in one float64 vector."""
    return torch.nn.utils.parameters_to_vector(params).detach().double()


def test_weight_change_equals_the_norms_of_a_float64_copy() -> None:
    from trainenv.monitor.weights import WeightChange

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 33),
                                torch.nn.LayerNorm(33), torch.nn.Linear(33, 7))  # fmt: skip
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    weights, before = WeightChange(params), flat64(params)
    for _ in range(3):
        model(torch.randint(50, (8,))).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        change, norm = weights.measure()
        after = flat64(params)
        assert float(change) == pytest.approx(float((after - before).norm()), rel=1e-6)
        assert float(norm) == pytest.approx(float(after.norm()), rel=1e-6)
        assert float(change) > 0
        before = after
    with torch.no_grad():
        params[0].mul_(2)  # moved outside an update (a rollback, say): reset takes it as the base
    weights.reset()
    assert float(weights.measure()[0]) == 0.0


def test_weight_change_names_parameters_it_cannot_measure() -> None:
    from trainenv.monitor.weights import WeightChange

    with pytest.raises(ValueError, match="params: no trained"):
        WeightChange([])


def test_weight_change_measures_non_contiguous_parameters() -> None:
    from trainenv.monitor.weights import WeightChange

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4).t()), torch.nn.Parameter(torch.randn(5))]
    assert not params[0].is_contiguous()
    weights = WeightChange(params)
    before = torch.cat([p.detach().reshape(-1) for p in params]).double()
    with torch.no_grad():
        params[0].add_(0.5)
        params[1].mul_(3)
    after = torch.cat([p.detach().reshape(-1) for p in params]).double()
    change, norm = weights.measure()
    assert float(change) == pytest.approx(float((after - before).norm()), rel=1e-6)
    assert float(norm) == pytest.approx(float(after.norm()), rel=1e-6)


def test_the_transformers_callback_row_equals_a_reference_computation() -> None:
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    from trainenv.monitor import MonitorCallback

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    callback = MonitorCallback(StabilityMonitor(MonitorCallback.CHANNELS), keep_rows=True)
    args = SimpleNamespace(max_grad_norm=0.5)  # clipped by the callback, after reading the norm
    callback.on_train_begin(args, None, None, model=model, optimizer=optimizer)
    assert args.max_grad_norm == 0.0
    for _ in range(3):
        before = flat64(params)
        batch = torch.randint(256, (4, 16))
        output = model(input_ids=batch, labels=batch)
        output.loss.backward()
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        callback.on_pre_optimizer_step(args, None, None)
        optimizer.step()
        callback.on_optimizer_step(args, None, None)
        optimizer.zero_grad()
        callback.on_step_end(args, None, None)
        after, row = flat64(params), callback.rows[-1]  # type: ignore[index]
        # 4 x 16 = 64 positions: the entropy is sampled on all of them (ENTROPY_POSITIONS).
        log_probs = torch.log_softmax(output.logits.detach().flatten(0, 1).double(), -1)
        assert row["train_loss"] == pytest.approx(float(output.loss.detach()), rel=1e-6)
        assert row["grad_norm"] == pytest.approx(grad_norm, rel=1e-6)
        assert row["max_logit"] == pytest.approx(
            float(output.logits.detach().abs().max()), rel=1e-6
        )
        assert row["token_entropy"] == pytest.approx(
            float(-(log_probs.exp() * log_probs).sum(-1).mean()), rel=1e-5
        )
        assert row["lr"] == 1e-2
        assert row["weight_norm"] == pytest.approx(float(after.norm()), rel=1e-6)
        assert row["update_ratio"] == pytest.approx(
            float((after - before).norm() / after.norm()), rel=1e-6
        )
    callback.on_train_end(args, None, None)
    assert args.max_grad_norm == 0.5


# -- transformers Trainer: a tiny GPT-2 with a planted learning-rate blow-up ----------------------
LM_ONSET, LM_UPDATES, LM_EVAL = 100, 160, 5  # blow-up from update 101; eval every 5 updates
LM_RULE = CollapseRule()  # on p = 1 - eval_loss / ln(256): negative validation loss, normalised


def lm_run(blow_up: float | None, policy: Any = None) -> tuple[Any, list[tuple[int, float]]]:
    """Train a 2-layer, 64-wide GPT-2 (byte vocabulary) on in-memory text with transformers'
    Trainer, the learning rate multiplied by ``blow_up`` from update ``LM_ONSET + 1`` on; the
    callback and the normalised performance after every evaluation."""
    import pydoc_data.topics

    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from trainenv.monitor import MonitorCallback

    text = "".join(pydoc_data.topics.topics.values())[:60_000]
    tokens = torch.tensor(list(text.encode()))

    class Windows(torch.utils.data.Dataset):
        def __init__(self, n: int, offset: int) -> None:
            self.n, self.offset = n, offset

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            x = tokens[self.offset + 29 * i : self.offset + 29 * i + 32]
            return {"input_ids": x, "labels": x}

    class BlowUp(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if blow_up is not None and state.global_step >= LM_ONSET:
                for group in kw["optimizer"].param_groups:
                    group["lr"] *= blow_up

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    args = TrainingArguments(
        output_dir="unused", per_device_train_batch_size=8, per_device_eval_batch_size=8,
        max_steps=LM_UPDATES, learning_rate=3e-3, lr_scheduler_type="constant",
        eval_strategy="steps", eval_steps=LM_EVAL, logging_steps=LM_UPDATES, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    held_out = Windows(8, len(tokens) - 300)
    trainer = Trainer(model=GPT2LMHeadModel(config), args=args,
                      train_dataset=Windows(2000, 0), eval_dataset=held_out)  # fmt: skip
    monitor = StabilityMonitor(MonitorCallback.CHANNELS, calibration_updates=48,
                               false_alarm_rate=RATE)  # fmt: skip
    # The planted blow-up lasts to the end, so a back-off must too (duration: the whole run).
    callback = MonitorCallback(monitor, policy=policy, duration=LM_UPDATES, checkpoint_every=10)
    callback.attach(trainer)
    trainer.add_callback(BlowUp())
    trainer.train()
    performance = [(h["step"], 1 - h["eval_loss"] / math.log(256))
                   for h in trainer.state.log_history if "eval_loss" in h]  # fmt: skip
    return callback, performance


@pytest.mark.slow
def test_transformers_trainer_alarms_before_the_collapse_rule_fires() -> None:
    callback, performance = lm_run(blow_up=100.0)
    collapse = collapse_update(performance, LM_RULE)
    assert collapse is not None and collapse > LM_ONSET
    alarms = callback.watch.alarms
    first = min(a.update for a in alarms if a.update > LM_ONSET)
    assert first < collapse
    assert alarm_rate([a for a in alarms if a.update <= LM_ONSET], LM_ONSET) <= 2 * RATE
    logged = [h for h in callback._trainer.state.log_history if "monitor/alarms" in h]
    assert logged and logged[0]["step"] == min(a.update for a in alarms)  # trainer.log got it


@pytest.mark.slow
def test_transformers_trainer_unperturbed_stays_within_the_false_alarm_rate() -> None:
    callback, performance = lm_run(blow_up=None)
    assert collapse_update(performance, LM_RULE) is None
    assert alarm_rate(callback.watch.alarms, LM_UPDATES) <= 2 * RATE


@pytest.mark.slow
def test_transformers_trainer_backoff_and_rollback_prevent_the_collapse() -> None:
    callback, performance = lm_run(blow_up=100.0, policy=BackoffAndRollbackOnAlarm())
    assert collapse_update(performance, LM_RULE) is None
    names = [a.name for a in callback.watch.actions]
    assert "lr_backoff" in names and "rollback" in names
    best = max(p for _, p in performance)
    assert performance[-1][1] >= 0.9 * best


# -- stable-baselines3: CartPole PPO with a planted learning-rate blow-up -------------------------
RL_ONSET, RL_UPDATES = 60, 90  # blow-up from update 61 (a rollout of 8 x 32 steps + training)
RL_RULE = CollapseRule()  # on p = mean return of the last 10 episodes / 500


def ppo_run(blow_up: float | None, policy: Any = None) -> tuple[Any, list[tuple[int, float]]]:
    """CartPole PPO (RL Zoo recipe), the learning rate multiplied by ``blow_up`` from update
    ``RL_ONSET + 1`` on; the callback and the normalised performance after every update."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from trainenv.monitor import SB3MonitorCallback

    class BlowUp(BaseCallback):
        def _init_callback(self) -> None:
            schedule = self.model.lr_schedule
            self.model.lr_schedule = lambda progress: schedule(progress) * self.factor
            self.factor = 1.0

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            updates = self.model._n_updates // self.model.n_epochs
            if blow_up is not None and updates >= RL_ONSET:
                self.factor = blow_up

    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gae_lambda=0.8,
                gamma=0.98, learning_rate=1e-3, ent_coef=0.0, seed=0, device="cpu")  # fmt: skip
    channels = SB3MonitorCallback.channels_of(model)
    monitor = StabilityMonitor(channels, detectors=SB3MonitorCallback.DETECTORS,
                               calibration_updates=32, false_alarm_rate=RATE)  # fmt: skip
    callback = SB3MonitorCallback(monitor, policy=policy, keep_rows=True,
                                  duration=RL_UPDATES, checkpoint_every=5)  # fmt: skip
    model.learn(RL_UPDATES * 256, callback=[BlowUp(), callback])
    performance = [(u + 1, row["episode_return"] / 500) for u, row in enumerate(callback.rows)]
    return callback, performance


@pytest.mark.slow
def test_sb3_ppo_alarms_before_the_collapse_rule_fires() -> None:
    callback, performance = ppo_run(blow_up=100.0)
    collapse = collapse_update(performance, RL_RULE)
    assert collapse is not None and collapse > RL_ONSET
    alarms = callback.watch.alarms
    assert min(a.update for a in alarms if a.update > RL_ONSET) < collapse
    assert alarm_rate([a for a in alarms if a.update <= RL_ONSET], RL_ONSET) <= 2 * RATE


@pytest.mark.slow
def test_sb3_ppo_unperturbed_stays_within_the_false_alarm_rate() -> None:
    callback, performance = ppo_run(blow_up=None)
    assert collapse_update(performance, RL_RULE) is None
    assert alarm_rate(callback.watch.alarms, RL_UPDATES) <= 2 * RATE


@pytest.mark.slow
def test_sb3_ppo_backoff_and_rollback_prevent_the_collapse() -> None:
    callback, performance = ppo_run(blow_up=100.0, policy=BackoffAndRollbackOnAlarm())
    assert collapse_update(performance, RL_RULE) is None
    names = [a.name for a in callback.watch.actions]
    assert "lr_backoff" in names and "rollback" in names
    assert performance[-1][1] >= 0.9 * max(p for _, p in performance)  # still learning
