"""Learned controllers: the hidden adversary, the training entry point, the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import trainenv  # noqa: F401
from agents import NoOp, RollbackOnDrop, Schedule
from agents.adversary import (
    HELDOUT_SPLIT,
    TRAIN_SPLIT,
    PerturbationRange,
    ScheduleDistribution,
    SeedSplit,
    make_adversarial_env,
)
from agents.controller_files import PICKLE_FILE, SETTINGS_FILE, WEIGHTS_FILE, load_policy
from agents.episodes import run_population
from agents.evaluate import (
    NOOP,
    UNPERTURBED,
    check_heldout,
    check_targets,
    evaluate,
    format_spread,
    heldout_episodes,
    load_evaluation,
    spread_table,
)
from agents.evaluate import main as evaluate_main
from agents.train_controller import (
    CONFIG_FILE,
    TENSORBOARD_DIR,
    ControllerConfig,
    PolicyController,
    load_config,
    load_controller,
    train_controller,
)
from agents.train_controller import main as train_main
from trainenv.audit.store import ResultStore
from trainenv.audit.summary import summarize
from trainenv.cli import main as cli_main

ENV = "trainenv/Digits-MLP-v0"
SMALL = {"k": 2, "max_steps": 12}
MIXED = ScheduleDistribution(
    perturbations=(
        PerturbationRange(name="lr_shock", low=10.0, high=1000.0),
        PerturbationRange(name="weight_noise", low=0.1, high=1.0),
        PerturbationRange(name="label_noise", low=0.2, high=0.8),
    ),
    shocks=(1, 3),
    onsets=(2, 10),
    min_gap=3,
)


def adversarial(distribution=MIXED, **kwargs):
    return make_adversarial_env(ENV, distribution, **{**SMALL, **kwargs})


# -- schedules ---------------------------------------------------------------------------------
def test_schedules_are_deterministic_per_seed_and_follow_the_declared_distribution() -> None:
    schedules = [MIXED.sample(seed) for seed in range(200)]
    assert MIXED.sample(7) == schedules[7]
    assert len({s.describe() for s in schedules}) > 150  # seeds give different schedules
    ranges = {p.name: (p.low, p.high) for p in MIXED.perturbations}
    counts = {name: 0 for name in ranges}
    for schedule in schedules:
        steps = [s.step for s in schedule.shocks]
        assert 1 <= len(steps) <= 3 and all(2 <= t <= 10 for t in steps)
        assert all(b - a >= 3 for a, b in zip(steps, steps[1:]))
        for shock in schedule.shocks:
            low, high = ranges[shock.name]
            assert low <= shock.magnitude <= high
            counts[shock.name] += 1
    # Each of the three dimensions is drawn about a third of the time.
    assert all(n > 0.25 * sum(counts.values()) for n in counts.values())


def test_bad_distributions_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="not a perturbation"):
        PerturbationRange(name="grad_clip", low=0.1, high=1.0)
    with pytest.raises(ValueError, match="magnitude of 'lr_shock' must be in"):
        PerturbationRange(name="lr_shock", low=1.0, high=10.0)
    with pytest.raises(ValueError, match="do not fit in onsets"):
        MIXED.model_validate({**MIXED.model_dump(), "shocks": (1, 5)})
    with pytest.raises(ValueError, match="must end before max_steps"):
        adversarial(MIXED.model_copy(update={"onsets": (2, 12)}))
    with pytest.raises(ValueError, match="stabilizers"):
        adversarial(stabilizers=["lr_shock"])


# -- the wrapper -------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # by design
@pytest.mark.parametrize("agent_actions", ["discrete", "continuous"])
def test_adversary_wrapper_passes_the_environment_checkers(agent_actions: str) -> None:
    env = adversarial(agent_actions=agent_actions)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    assert {i.name for i in env.agent_spec.interventions} == {
        "grad_clip", "lr_backoff", "rollback", "grad_noise", "dropout"
    }  # fmt: skip


def trajectory(env, seed=None, options=None, steps=12) -> tuple[dict, list]:
    obs, info = env.reset(seed=seed, options=options)
    out = [obs]
    for _ in range(steps):
        obs, _, terminated, truncated, step_info = env.step(0)
        out.append(obs)
        if terminated or truncated:
            break
    return info, out


def test_the_schedule_is_deterministic_per_seed() -> None:
    env = adversarial()
    info_a, obs_a = trajectory(env, seed=5)
    schedule = env.schedule
    info_b, obs_b = trajectory(env, seed=5)
    assert env.schedule == schedule and info_a["run_seed"] == info_b["run_seed"]
    for a, b in zip(obs_a, obs_b):
        np.testing.assert_array_equal(a, b)
    env.reset(seed=5)
    after = env.reset()  # seedless resets continue the seeded stream
    env.reset(seed=5)
    assert env.reset()[1]["schedule_seed"] == after[1]["schedule_seed"]


def test_the_schedule_is_hidden_from_the_observation() -> None:
    single = MIXED.model_copy(update={"shocks": (1, 1)})
    env = adversarial(single)
    by_onset = {single.sample(q).shocks[0].step: q for q in range(50)}
    early, late = min(by_onset), max(by_onset)
    q_early, q_late = by_onset[early], by_onset[late]
    _, obs_early = trajectory(env, options={"run_seed": 3, "schedule_seed": q_early})
    _, obs_late = trajectory(env, options={"run_seed": 3, "schedule_seed": q_late})
    assert obs_early[0].shape == env.observation_space.shape
    # Same run, different schedules: identical observations until the earlier shock lands.
    for t in range(early + 1):
        np.testing.assert_array_equal(obs_early[t], obs_late[t])
    assert not np.array_equal(obs_early[early + 1], obs_late[early + 1])


def test_shocks_and_stabilizers_act_in_the_same_step() -> None:
    one = ScheduleDistribution(
        perturbations=(PerturbationRange(name="lr_shock", low=100.0, high=100.0),),
        shocks=(1, 1), onsets=(3, 3),
    )  # fmt: skip
    env = adversarial(one, agent_actions="continuous")
    env.reset(seed=0)
    clip = env.agent_spec.encode({"grad_clip": 0.5})
    applied = [dict(env.step(clip)[4]["applied"]) for _ in range(4)]
    assert [set(a) for a in applied] == [{"grad_clip"}] * 3 + [{"grad_clip", "lr_shock"}]
    assert applied[3]["lr_shock"] == pytest.approx(100.0, rel=1e-5)
    with pytest.raises(ValueError, match="the agent may apply only"):
        env.step_inner(env.unwrapped.action_spec.encode({"lr_shock": 100.0}))


# -- the evaluation protocol -------------------------------------------------------------------
def test_evaluation_seeds_are_disjoint_from_training_by_construction() -> None:
    assert TRAIN_SPLIT.isdisjoint(HELDOUT_SPLIT)
    episodes = heldout_episodes(50)
    for e in episodes:
        assert e.run_seed in HELDOUT_SPLIT.run and e.run_seed not in TRAIN_SPLIT.run
        assert e.schedule_seed in HELDOUT_SPLIT.schedule
        assert e.schedule_seed not in TRAIN_SPLIT.schedule
    training = adversarial()
    for seed in range(20):
        info = training.reset(seed=seed)[1]
        assert info["run_seed"] in TRAIN_SPLIT.run
        assert info["schedule_seed"] in TRAIN_SPLIT.schedule
    with pytest.raises(ValueError, match="run_seed must be an integer in"):
        training.reset(options={"run_seed": episodes[0].run_seed})
    leaky = SeedSplit("leaky", run=range(2_000_000, 2_000_010), schedule=range(500, 510))
    with pytest.raises(ValueError, match="overlap the training split"):
        check_heldout(leaky)
    with pytest.raises(ValueError, match="overlap the training split"):
        evaluate(training, {}, heldout_episodes(1))  # a training env is refused


def test_evaluate_on_a_tiny_case_gives_sane_metrics(tmp_path, capsys) -> None:
    # Every schedule: one lr shock of 5000-10000x at step 6, deadly unless the controller
    # backs the learning rate off and rolls the run back.
    deadly = ScheduleDistribution(
        perturbations=(PerturbationRange(name="lr_shock", low=5000.0, high=1e4),),
        shocks=(1, 1), onsets=(6, 6),
    )  # fmt: skip
    # Performance measured every step (4 updates), the last good fork refreshed every 2 steps.
    env = adversarial(
        deadly, k=4, trainer_kwargs={"eval_every": 4}, checkpoint_every=2, split=HELDOUT_SPLIT
    )
    rescue = {7: {"lr_backoff": 0.01}, 8: {"rollback": 1.0}}
    evaluation = evaluate(
        env, {"rescue": lambda e: Schedule(e, rescue)}, heldout_episodes(3), out=tmp_path,
        n_boot=200,
    )  # fmt: skip
    summary = evaluation.summary.table.set_index("controller")
    assert list(summary.index) == [UNPERTURBED, NOOP, "rescue"]
    assert summary.loc[NOOP, "collapsed"] == 1.0 and summary.loc[NOOP, "final_p"] == 0.0
    assert summary.loc[UNPERTURBED, "collapsed"] == 0.0
    assert summary.loc["rescue", "collapsed"] == 0.0
    assert summary.loc["rescue", "cost"] == pytest.approx(0.002 + 0.02)
    assert summary.loc[UNPERTURBED, "cost"] == summary.loc[NOOP, "cost"] == 0.0
    calm = summary.loc[UNPERTURBED]
    assert 0.5 < calm.final_p <= 1.0 and 0 < calm.auc < calm.final_p  # learning from chance
    assert summary.loc[NOOP, "auc"] < summary.loc["rescue", "auc"] <= calm.auc + 0.05
    for metric in ("collapsed", "final_p", "auc", "cost"):
        assert (summary[f"{metric}_lo"] <= summary[metric] + 1e-12).all()
        assert (summary[metric] <= summary[f"{metric}_hi"] + 1e-12).all()
    verdicts = check_targets(evaluation.summary, "rescue", [])
    assert [v.met for v in verdicts][0] is True  # collapse rate 0 <= half of 1
    runs = ResultStore(tmp_path).runs()
    assert len(runs) == 9 and set(runs["kind"]) == {"controller"}
    report = (tmp_path / "report.md").read_text()
    assert "rescue" in report and (tmp_path / "figures" / "controllers.png").exists()
    # `trainenv report` redraws an evaluation from its store: the same table.
    (tmp_path / "report.md").unlink()
    assert cli_main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == report
    assert evaluation.table() in capsys.readouterr().out
    with pytest.raises(ValueError, match="controller evaluation, not an audit"):
        summarize(ResultStore(tmp_path).runs())
    with pytest.raises(ValueError, match="already holds results"):
        evaluate(env, {}, heldout_episodes(1), out=tmp_path)


# -- the training entry point ------------------------------------------------------------------
@pytest.mark.slow
def test_train_controller_runs_end_to_end_and_saves_a_loadable_model(tmp_path, capsys) -> None:
    out = tmp_path / "ctl"
    argv = [ENV, "--timesteps", "128", "--out", str(out), "--n-envs", "2", "--dummy",
            "--n-steps", "64", "--env-kwargs", '{"k": 2, "max_steps": 12}']  # fmt: skip
    assert train_main(argv) == 0
    assert list((out / TENSORBOARD_DIR).rglob("events.out.tfevents.*"))
    config = load_config(out)
    assert config.env_id == ENV and config.distribution is not None  # default spelled out
    env = config.make_env(HELDOUT_SPLIT)
    assert (out / SETTINGS_FILE).exists() and (out / WEIGHTS_FILE).exists()
    assert not (out / PICKLE_FILE).exists()
    model = load_policy(out)
    assert isinstance(model, PPO) and model.num_timesteps >= 128
    controller = PolicyController(model, env)
    episode = heldout_episodes(1)[0]
    obs, info = env.reset(options=vars(episode))
    env.step_inner(controller.act(obs, info))
    with pytest.raises(ValueError, match="action space"):
        PolicyController(model, config.model_copy(update={"levels": 2}).make_env())
    assert evaluate_main([str(out), "--episodes", "1", "--no-rules"]) == 0
    assert "learned" in capsys.readouterr().out
    assert (out / CONFIG_FILE).exists() and (out / "evaluation" / "report.md").exists()


# -- the spread over trainings -----------------------------------------------------------------
def summary_frame(rows: dict[str, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"controller": c, "n": 4, "collapsed": x, "final_p": p} for c, (x, p) in rows.items()]
    )


def test_spread_table_gives_the_median_and_range_over_trainings() -> None:
    baselines = summary_frame({UNPERTURBED: (0.0, 0.96), NOOP: (0.5, 0.5), "rule": (0.4, 0.6)})
    learned = [(0.1, 0.9), (0.3, 0.7), (0.0, 0.95)]
    trainings = [summary_frame({"learned": r}) for r in learned]
    spread = spread_table([baselines, *trainings]).set_index("controller")
    assert list(spread.index) == [UNPERTURBED, NOOP, "rule", "learned"]
    assert list(spread.columns) == ["trainings", "collapsed", "collapsed_min", "collapsed_max",
                                    "final_p", "final_p_min", "final_p_max"]  # fmt: skip
    assert spread.loc["learned"].tolist() == pytest.approx([3, 0.1, 0.0, 0.3, 0.9, 0.7, 0.95])
    assert spread.loc[NOOP].tolist() == pytest.approx([1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    # An even number of trainings: the median is the mean of the middle two.
    even = spread_table([baselines, *trainings[:2]]).set_index("controller")
    assert even.loc["learned", "collapsed"] == pytest.approx(0.2)
    assert even.loc["learned", "final_p"] == pytest.approx(0.8)
    text = format_spread(spread.reset_index()).splitlines()
    assert "median [min, max]" in text[0] and len(text) == 5
    assert text[-1].split()[:4] == ["learned", "3", "0.100", "[0.000,"]
    # The targets read the medians: 0.1 <= 0.5 / 2, but 0.9 < 0.95 * 0.96.
    met = [v.met for v in check_targets(spread.reset_index(), "learned", ["rule"])]
    assert met == [True, False, True]
    with pytest.raises(ValueError, match="columns"):
        spread_table([baselines.drop(columns="final_p")])
    with pytest.raises(ValueError, match="at least one"):
        spread_table([])


SHOCKS_LATE = MIXED.model_copy(update={"onsets": (2, 4), "min_gap": 1})


def test_the_spread_over_two_tiny_trainings(tmp_path) -> None:
    torch.set_num_threads(1)
    small = {"k": 2, "max_steps": 6, "observation": "telemetry"}
    shocks = MIXED.model_copy(update={"onsets": (1, 4), "min_gap": 1})
    config = ControllerConfig(env_id=ENV, env_kwargs=small, distribution=shocks)
    env = config.make_env(HELDOUT_SPLIT)
    episodes = heldout_episodes(2)
    baselines = evaluate(env, {}, episodes, n_boot=50, out=tmp_path / "baselines")
    # The baselines reload for another setting's trainings on the same episodes only.
    reloaded = load_evaluation(tmp_path / "baselines", env, episodes).summary.table
    assert reloaded[["controller", "collapsed", "final_p"]].equals(
        baselines.summary.table[["controller", "collapsed", "final_p"]]
    )
    with pytest.raises(ValueError, match="other episodes"):
        load_evaluation(tmp_path / "baselines", env, heldout_episodes(3))
    other = config.model_copy(update={"distribution": SHOCKS_LATE}).make_env(HELDOUT_SPLIT)
    with pytest.raises(ValueError, match="distribution"):
        load_evaluation(tmp_path / "baselines", other, episodes)
    summaries = [baselines.summary.table]
    for seed in (0, 1):
        train_controller(config, 64, tmp_path / str(seed), n_envs=2, seed=seed,
                         ppo_kwargs={"n_steps": 16, "batch_size": 16})  # fmt: skip
        learned = {"learned": lambda e, s=seed: load_controller(tmp_path / str(s), e)}
        evaluation = evaluate(env, learned, episodes, unperturbed=False, noop=False, n_boot=50)
        assert list(evaluation.summary.table["controller"]) == ["learned"]
        summaries.append(evaluation.summary.table)
    spread = spread_table(summaries).set_index("controller")
    assert list(spread.index) == [UNPERTURBED, NOOP, "learned"]
    assert list(spread["trainings"]) == [1, 1, 2]
    runs = [s.set_index("controller").loc["learned"] for s in summaries[1:]]
    for metric in ("collapsed", "final_p"):
        values = [r[metric] for r in runs]
        assert spread.loc["learned", metric] == pytest.approx(np.mean(values))
        assert spread.loc["learned", f"{metric}_min"] == min(values)
        assert spread.loc["learned", f"{metric}_max"] == max(values)
    with pytest.raises(ValueError, match="none to evaluate"):
        evaluate(env, {}, episodes, unperturbed=False, noop=False)


# -- evaluation on populations -------------------------------------------------------------------
class _SingleEnvProbe:
    """A no-op that needs the single-run env (as ForkSearch does) and records its schedules."""

    needs_single_env = True

    def __init__(self, env) -> None:
        self.env, self.seen, self._noop = env, [], NoOp(env)

    def reset(self) -> None:
        self.seen.append(self.env.schedule.seed)  # set by the single-run env's reset only

    def act(self, obs, info):
        return self._noop.act(obs, info)


def test_population_evaluation_uses_the_heldout_episodes_and_the_per_run_format() -> None:
    env = adversarial(split=HELDOUT_SPLIT)
    episodes = heldout_episodes(3)
    rollback = {"rollback on drop": RollbackOnDrop}
    pooled = evaluate(env, rollback, episodes, n_boot=20, population=True)
    single = evaluate(env, rollback, episodes, n_boot=20, population=False)
    assert list(pooled.runs.columns) == list(single.runs.columns)
    assert list(pooled.summary.table.columns) == list(single.summary.table.columns)
    assert list(pooled.summary.table["controller"]) == [UNPERTURBED, NOOP, "rollback on drop"]
    for name, group in pooled.runs.groupby("controller"):
        assert list(zip(group["seed"], group["schedule_seed"])) == [
            (e.run_seed, e.schedule_seed) for e in episodes
        ]
        shocked = name != UNPERTURBED
        schedules = [MIXED.sample(e.schedule_seed).describe() if shocked else "none"
                     for e in episodes]  # fmt: skip
        assert list(group["schedule"]) == schedules
    # The shocks strike each member at their step, as in the single-run env.
    noop = run_population(env, NOOP, NoOp, episodes)
    for record, episode in zip(noop, episodes):
        for shock in MIXED.sample(episode.schedule_seed).shocks:
            assert shock.name in record.steps[shock.step + 1]["applied"]
    # A controller that needs the single-run env is run one episode at a time.
    probes: list[_SingleEnvProbe] = []
    evaluate(env, {"probe": lambda e: probes.append(_SingleEnvProbe(e)) or probes[-1]},
             episodes, unperturbed=False, noop=False, n_boot=20, population=True)  # fmt: skip
    assert [p.seen for p in probes] == [[e.schedule_seed for e in episodes]]
    with pytest.raises(ValueError, match="members must be"):
        evaluate(env, {}, episodes, members=0)
    # Members observe as the env's agent does: with progress, p and best_p appended.
    progress = adversarial(split=HELDOUT_SPLIT, progress=True)
    (record,) = run_population(progress, NOOP, NoOp, episodes[:1])
    last = record.steps[-1]
    assert len(last["observation"]) == progress.observation_space.shape[0]
    best = max(0.0, *(step["p"] for step in record.steps))  # best_p: the best p so far
    assert last["observation"][-2:] == pytest.approx([last["p"], best], abs=1e-6)


def test_a_population_member_has_the_outcome_it_has_alone() -> None:
    env = adversarial(split=HELDOUT_SPLIT)
    episodes = heldout_episodes(3)
    together = run_population(env, NOOP, NoOp, episodes, members=2)  # populations of 2 and 1
    alone = run_population(env, NOOP, NoOp, episodes[1:2])
    drop = {"wall_s"}
    assert {k: v for k, v in together[1].row.items() if k not in drop} == {
        k: v for k, v in alone[0].row.items() if k not in drop
    }
    # Every step the same (telemetry is NaN before the first update, hence frames).
    pd.testing.assert_frame_equal(pd.DataFrame(together[1].steps), pd.DataFrame(alone[0].steps))
