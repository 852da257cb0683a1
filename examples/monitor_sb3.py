"""Monitoring a stable-baselines3 run: CartPole PPO whose learning rate blows up.

PPO (the RL Zoo recipe: 8 environments x 32 steps, 20 epochs) learns CartPole; from update
``--onset`` on its learning rate is multiplied by ``--blow-up`` (a planted fault).
``SB3MonitorCallback`` feeds trainenv's ``StabilityMonitor`` after every update (calibrated
live on the first 32), records alarms in the model's logger (``monitor/...``: TensorBoard
shows them) and writes them to ``--out/<run>.parquet``. With ``--act`` the rule-based policy of
``examples/monitor_hf.py`` backs the learning rate off and rolls the policy back.

Run: ``python examples/monitor_sb3.py [--act]`` (about 15 s on one CPU thread). Without
``--act`` the return collapses after the onset; with it PPO goes on to solve CartPole.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from agents import BackoffAndRollbackOnAlarm
from trainenv.monitor import SB3MonitorCallback, StabilityMonitor


class BlowUp(BaseCallback):
    """The planted fault: the learning rate times ``factor`` from update ``onset`` on."""

    def __init__(self, onset: int, factor: float) -> None:
        super().__init__()
        self.onset, self.factor, self.scale = onset, factor, 1.0

    def _init_callback(self) -> None:
        schedule = self.model.lr_schedule
        self.model.lr_schedule = lambda progress: schedule(progress) * self.scale

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        model: Any = self.model
        if model._n_updates // model.n_epochs >= self.onset:
            self.scale = self.factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=90)
    parser.add_argument("--onset", type=int, default=60)
    parser.add_argument("--blow-up", type=float, default=100.0)
    parser.add_argument("--act", action="store_true", help="back off and roll back on alarms")
    parser.add_argument("--out", type=Path, default=Path("runs/monitor"))
    options = parser.parse_args()
    torch.set_num_threads(1)
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gae_lambda=0.8,
                gamma=0.98, learning_rate=1e-3, ent_coef=0.0, seed=0, device="cpu")  # fmt: skip
    channels = SB3MonitorCallback.channels_of(model)
    monitor = StabilityMonitor(channels, detectors=SB3MonitorCallback.DETECTORS,
                               calibration_updates=32)  # fmt: skip
    run_id = "ppo-act" if options.act else "ppo"
    policy = BackoffAndRollbackOnAlarm() if options.act else None
    callback = SB3MonitorCallback(monitor, policy=policy,
                                  log_dir=options.out, run_id=run_id, keep_rows=True,
                                  duration=options.updates, checkpoint_every=5)  # fmt: skip
    model.learn(options.updates * 256, callback=[BlowUp(options.onset, options.blow_up), callback])
    for alarm in callback.watch.alarms[:5]:
        print(f"alarm   update {alarm.update:4d}  {alarm.detector:<18} score {alarm.score:.3g}")
    for action in callback.watch.actions:
        print(f"action  update {action.update:4d}  {action.name}={action.magnitude:g}")
    returns = [row["episode_return"] for row in callback.rows or []]
    print(f"mean return: best {max(returns):.0f}, last {returns[-1]:.0f} (of 500); "
          f"events in {options.out}/{run_id}.parquet")  # fmt: skip


if __name__ == "__main__":
    main()
