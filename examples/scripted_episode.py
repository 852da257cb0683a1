"""A scripted episode: shock a training run mid-way, then stabilise it, and print the trajectory.

python examples/scripted_episode.py                       # PPO on CartPole
python examples/scripted_episode.py --env trainenv/Digits-MLP-v0 --shock 1000
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch

import trainenv  # noqa: F401  (registers the environments)
from agents import Schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="trainenv/CartPole-PPO-v0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40, help="steps to run (<= the env's max)")
    parser.add_argument("--onset", type=int, default=15, help="step of the learning-rate shock")
    parser.add_argument("--shock", type=float, default=100.0, help="learning-rate multiplier")
    args = parser.parse_args()
    torch.set_num_threads(1)

    env = gym.make(args.env, action_mode="continuous", max_steps=args.steps)
    schedule = Schedule(env, {args.onset: {"lr_shock": args.shock},
                              args.onset + 3: {"grad_clip": 0.5, "lr_backoff": 0.1}})  # fmt: skip
    obs, info = env.reset(seed=args.seed)
    channels = list(info["telemetry"])[:3]
    print(f"{args.env}, seed {args.seed}: {env.unwrapped.k} update(s) per step")
    print(f"{'step':>4}  {'action':<34} {'perf':>8} {'reward':>8}  "
          + "  ".join(f"{c[:12]:>12}" for c in channels) + "  latent[0:2]")  # fmt: skip
    for step in range(args.steps):
        action = schedule.action(step)
        obs, reward, terminated, truncated, info = env.step(action)
        described = env.unwrapped.action_spec.describe(action)
        values = "  ".join(f"{info['telemetry'][c]:>12.4g}" for c in channels)
        print(f"{step:>4}  {described:<34} {info['performance']:>8.3f} {reward:>8.3f}  {values}"
              f"  {obs[0]:+.2f} {obs[1]:+.2f}")  # fmt: skip
        if terminated or truncated:
            print(f"episode ended by {'collapse: ' + info['collapse'] if terminated else 'budget'}")
            break


if __name__ == "__main__":
    main()
