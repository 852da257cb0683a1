"""Train controllers that keep a training run from collapsing, several times, and evaluate them
on held-out runs: the spread over trainings (median and range) against no-op and the rules.

The run: an MLP on scikit-learn's digits (``trainenv/Digits-MLP-v0``, 50 steps of 10 updates;
``--env trainenv/CartPole-PPO-v0`` for PPO on CartPole, 100 steps of one update). A hidden
adversary strikes it 1-3 times per episode, each time in a random dimension at a random
magnitude (:data:`DISTRIBUTION` on Digits, the env's default distribution elsewhere); a
learning-rate shock above ~100x makes the run collapse unless something intervenes. Each
controller (PPO, trained on the ``--n-envs`` runs of a population) may clip gradients, back
the learning rate off, roll the run back to its last good fork, or (``--actions compound``,
the default) do the last two in one action. ``--trainings`` independent trainings (seeds 0,
1, ...) are each evaluated on the same held-out run seeds under held-out schedules; no-op, the
rule-based controllers and the unperturbed run are evaluated once on those episodes.

    python examples/train_controller.py                      # 5 trainings, Digits (~14 min)
    python examples/train_controller.py --quick              # a quick look (~2 min)
    python examples/train_controller.py --actions continuous --cost-weight 1 --n-steps 128

Measured on 2 cores shared with five other jobs, 20 held-out episodes, 5 trainings of 15k
steps each (median [min, max] over trainings; collapse rate / final p: no-op 0.550 / 0.425, the
best rule, back-off on loss spike, 0.450 / 0.494, unperturbed final p 0.966):

- the defaults (compound menu, stabilizer cost weighted 5x in the reward, 64-step rollouts):
  collapse rate 0.000 [0.000, 0.100], final p 0.934 [0.848, 0.952]: all three targets met on
  the medians (8.5 min for the 5 trainings and their evaluations, baselines reused);
- continuous actions, cost weight 1, 128-step rollouts (the previous example): collapse rate
  0.300 [0.150, 0.350], final p 0.652 [0.602, 0.752]: better than every rule, far from the
  other two targets (13 min, 5 of them the baselines).

Evaluation runs each controller's held-out episodes as the members of one population (one
batched computation; :mod:`agents.episodes`), except fork search, which forks the single-run
env and runs one episode at a time. On CartPole (``--env trainenv/CartPole-PPO-v0 --episodes
16 --n-envs 16 --timesteps 16384``, the defaults otherwise; 35 min in all, nice 19 on the busy
cores): the baselines took 500 s, about 20 s per controller for 16 episodes on a population
against ~9 s per episode one at a time, and 395 s for fork search (per run). Collapse rate /
final p: no-op 0.438 / 0.374, the best rule (rollback on drop) 0.062 / 0.510, unperturbed final
p 0.774; learned, 5 trainings of 4.5-5.6 min each: 0.375 [0.250, 0.438] / 0.284 [0.207, 0.373].
No target is met on CartPole: the learned controller is no better than no-op. With
``--progress`` (the controller also observes ``p`` and ``best_p``, which a telemetry observation
lacks; baselines reused, 25 min): 0.188 [0.000, 0.375] / 0.271 [0.127, 0.380]: the collapse
target met, final p still far below unperturbed and below rollback on drop.

Results under ``OUT``: ``training-<seed>/`` per training (``policy.json``,
``policy.safetensors``, ``tensorboard/``, ``evaluation/``: report and results store of the
learned controller), ``baselines/`` (the evaluation of no-op, rules and unperturbed; pass it to
``--baselines`` to reuse it for another setting) and ``spread.md`` (the table printed).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

import trainenv  # noqa: F401  (registers the environments)
from agents.adversary import HELDOUT_SPLIT, PerturbationRange, ScheduleDistribution
from agents.evaluate import (
    check_targets,
    evaluate,
    format_spread,
    format_verdicts,
    heldout_episodes,
    load_evaluation,
    rule_controllers,
    spread_table,
)
from agents.train_controller import ControllerConfig, load_controller, train_controller

DISTRIBUTION = ScheduleDistribution(
    perturbations=(
        PerturbationRange(name="lr_shock", low=30.0, high=3000.0),  # optimization
        PerturbationRange(name="input_shift", low=1.0, high=10.0),  # data
        PerturbationRange(name="weight_noise", low=0.5, high=3.0),  # parametric
        PerturbationRange(name="label_noise", low=0.3, high=1.0),  # learning signal
    ),
    shocks=(1, 3),
    onsets=(8, 40),
    min_gap=5,
)
STABILIZERS = ("grad_clip", "lr_backoff", "rollback")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="trainenv/Digits-MLP-v0")
    parser.add_argument("--timesteps", type=int, default=15_000, help="env steps per training")
    parser.add_argument("--episodes", type=int, default=20, help="held-out evaluation episodes")
    parser.add_argument("--trainings", type=int, default=5, help="independent trainings")
    parser.add_argument("--n-envs", type=int, default=8, help="population members per batch")
    parser.add_argument(
        "--actions", choices=["compound", "continuous", "discrete"], default="compound",
        help="the agent's action space (compound: the menu plus 'back off and roll back')",
    )  # fmt: skip
    parser.add_argument(
        "--cost-weight", type=float, default=5.0,
        help="reward shaping: weight of the stabilizers' cost in the reward",
    )  # fmt: skip
    parser.add_argument("--n-steps", type=int, default=64, help="PPO rollout length per member")
    parser.add_argument(
        "--progress", action="store_true",
        help="the controller also observes p and best_p (a drop from the best is visible)",
    )  # fmt: skip
    parser.add_argument("--no-rules", action="store_true", help="skip the rule-based controllers")
    parser.add_argument(
        "--baselines", type=Path,
        help="reuse OUT/baselines of an earlier run (same env, distribution and episodes)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 short trainings, 4 episodes")
    parser.add_argument("--out", type=Path, default=Path("runs/controller-example"))
    args = parser.parse_args()
    if args.quick:
        args.timesteps, args.episodes, args.trainings = 2048, 4, 2
    if args.trainings < 1:
        parser.error(f"--trainings must be >= 1, got {args.trainings}")
    if args.cost_weight < 0:
        parser.error(f"--cost-weight must be >= 0, got {args.cost_weight}")
    torch.set_num_threads(1)

    # Raw telemetry observations, because a learning-rate shock shows directly in the `lr`
    # channel. Continuous or compound actions, because the reaction that saves a run from that
    # shock is two stabilizers in one step: back the learning rate off *and* roll back (a plain
    # menu applies one a step, and the collapse rule fires ~3 steps after the shock).
    config = ControllerConfig(
        env_id=args.env,
        env_kwargs={"observation": "telemetry", "reward": {"cost_weight": args.cost_weight}},
        distribution=DISTRIBUTION if args.env == "trainenv/Digits-MLP-v0" else None,
        agent_actions=args.actions, stabilizers=STABILIZERS, progress=args.progress,
    ).resolved()  # fmt: skip
    env = config.make_env(HELDOUT_SPLIT)
    episodes = heldout_episodes(args.episodes)
    rules = {} if args.no_rules else rule_controllers(env)
    started = time.perf_counter()
    if args.baselines is not None:
        baselines = load_evaluation(args.baselines, env, episodes)
        rules = {name: make for name, make in rules.items() if name in set(baselines.runs.recipe)}
    else:
        shutil.rmtree(args.out / "baselines", ignore_errors=True)
        baselines = evaluate(env, rules, episodes, out=args.out / "baselines")
        print(f"baselines evaluated in {time.perf_counter() - started:.0f} s")
        print(baselines.table(), flush=True)
    summaries = [baselines.summary.table]
    ppo_kwargs = {"n_steps": args.n_steps}
    for seed in range(args.trainings):
        directory = args.out / f"training-{seed}"
        started = time.perf_counter()
        train_controller(
            config, args.timesteps, directory, n_envs=args.n_envs, seed=seed, ppo_kwargs=ppo_kwargs
        )
        trained = time.perf_counter() - started
        shutil.rmtree(directory / "evaluation", ignore_errors=True)
        learned = {"learned": lambda e, d=directory: load_controller(d, e)}
        evaluation = evaluate(
            env, learned, episodes, unperturbed=False, noop=False, out=directory / "evaluation"
        )
        row = evaluation.summary.table.iloc[0]
        print(
            f"training {seed}: {args.timesteps} steps in {trained:.0f} s, evaluated in "
            f"{time.perf_counter() - started - trained:.0f} s: collapse rate "
            f"{row.collapsed:.3f}, final p {row.final_p:.3f}",
            flush=True,
        )
        summaries.append(evaluation.summary.table)
    spread = spread_table(summaries)
    text = format_spread(spread)
    verdicts = format_verdicts(check_targets(spread, "learned", list(rules)))
    (args.out / "spread.md").write_text(f"```\n{text}\n\n{verdicts}\n```\n")
    print(f"\n{args.env}, {args.episodes} held-out episodes, {args.trainings} trainings of "
          f"{args.timesteps} steps (targets on the learned controller's medians):\n")  # fmt: skip
    print(text)
    print()
    print(verdicts)


if __name__ == "__main__":
    main()
