"""Monitoring a transformers ``Trainer`` run: a tiny GPT-2 whose learning rate blows up.

A 2-layer, 64-wide GPT-2 (byte vocabulary, built from a config: no download) trains on text
Python ships (``pydoc_data``) with transformers' own ``Trainer``. From update ``--onset`` on,
the learning rate is multiplied by ``--blow-up`` (a planted fault). ``MonitorCallback`` feeds
trainenv's ``StabilityMonitor`` every update (calibrated live on the first 48), logs its alarms
through ``trainer.log`` and writes them to ``--out/<run>.parquet``. With ``--act`` the
rule-based policy ``agents.BackoffAndRollbackOnAlarm`` backs the learning rate off and rolls the
run back to its last good in-memory checkpoint when the monitor alarms.

Run: ``python examples/monitor_hf.py [--act]`` (about 20 s on one CPU thread). Without
``--act`` the validation loss jumps after the onset; with it the run keeps learning.
"""

from __future__ import annotations

import argparse
import math
import pydoc_data.topics
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from agents import BackoffAndRollbackOnAlarm
from trainenv.monitor import MonitorCallback, StabilityMonitor


class Windows(torch.utils.data.Dataset):
    """``n`` windows of 32 bytes of ``tokens`` from ``offset`` (inputs are the labels)."""

    def __init__(self, tokens: torch.Tensor, n: int, offset: int) -> None:
        self.tokens, self.n, self.offset = tokens, n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.tokens[self.offset + 29 * i : self.offset + 29 * i + 32]
        return {"input_ids": x, "labels": x}


class BlowUp(TrainerCallback):
    """The planted fault: the learning rate times ``factor`` from update ``onset`` on."""

    def __init__(self, onset: int, factor: float) -> None:
        self.onset, self.factor = onset, factor

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.onset:
            for group in kw["optimizer"].param_groups:
                group["lr"] *= self.factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=160)
    parser.add_argument("--onset", type=int, default=100)
    parser.add_argument("--blow-up", type=float, default=100.0)
    parser.add_argument("--act", action="store_true", help="back off and roll back on alarms")
    parser.add_argument("--out", type=Path, default=Path("runs/monitor"))
    options = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = torch.tensor(list("".join(pydoc_data.topics.topics.values())[:60_000].encode()))
    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    args = TrainingArguments(
        output_dir=str(options.out / "hf-trainer"), per_device_train_batch_size=8,
        max_steps=options.updates, learning_rate=3e-3, lr_scheduler_type="constant",
        eval_strategy="steps", eval_steps=10, logging_steps=20, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=GPT2LMHeadModel(config), args=args,
                      train_dataset=Windows(tokens, 2000, 0),
                      eval_dataset=Windows(tokens, 8, len(tokens) - 300))  # fmt: skip
    monitor = StabilityMonitor(MonitorCallback.CHANNELS, calibration_updates=48)
    policy = BackoffAndRollbackOnAlarm() if options.act else None
    run_id = "hf-act" if options.act else "hf"
    callback = MonitorCallback(monitor, policy=policy, log_dir=options.out, run_id=run_id,
                               duration=options.updates)  # fmt: skip
    callback.attach(trainer)
    trainer.add_callback(BlowUp(options.onset, options.blow_up))
    trainer.train()
    for alarm in callback.watch.alarms[:5]:
        print(f"alarm   update {alarm.update:4d}  {alarm.detector:<18} score {alarm.score:.3g}")
    for action in callback.watch.actions:
        print(f"action  update {action.update:4d}  {action.name}={action.magnitude:g}")
    losses = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    best = min(loss for _, loss in losses)
    print(f"validation loss: best {best:.3f}, last {losses[-1][1]:.3f} (a uniform guess: "
          f"{math.log(256):.3f}); events in {options.out}/{run_id}.parquet")  # fmt: skip


if __name__ == "__main__":
    main()
