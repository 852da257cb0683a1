"""The evaluation protocol for controllers: held-out runs under held-out adversarial schedules.

Every controller meets the same episodes: episode ``i`` is run seed ``i`` and schedule seed
``i`` of :data:`~agents.adversary.HELDOUT_SPLIT`, whose seed ranges are disjoint from the
training split's (checked before anything runs), so no evaluated run or schedule was seen in
training. The *unperturbed* row is the no-op controller on the same run seeds with no shocks:
the reference for final performance.

Where the env has a population form (``gymnasium.make_vec`` with its vector entry point:
Digits-MLP, CartPole-PPO), a controller's episodes run as the members of one population
(:func:`run_population`: member ``i`` is episode ``i``, its run seed, its schedule's shocks and
its own controller instance; one batched computation advances them all). A controller that
needs the single-run env (``needs_single_env``: :class:`~agents.rules.ForkSearch` forks it) and
envs without a population form run one episode at a time (:func:`run_episode`). A population
member equals the single-run trainer statistically, not bit for bit; members are independent
of each other.

Per episode and per controller the metrics are those of
:mod:`trainenv.audit.controllers` (collapse, final ``p``, area under the curve, intervention
cost; means with bootstrap CIs over episodes). Results go to a
:class:`~trainenv.audit.store.ResultStore` in the audit's layout (one ``runs/`` row and one
``steps/`` table per controller and episode, ``kind="controller"``), with ``report.md`` and
``figures/controllers.png``; ``trainenv report DIR`` redraws them.

::

    python -m agents.evaluate runs/ctl --episodes 30      # a directory of train_controller
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from agents.adversary import HELDOUT_SPLIT, TRAIN_SPLIT, AdversaryWrapper, SeedSplit
from agents.episodes import (
    ControllerFactory,
    Episode,
    env_name,
    has_population,
    run_episode,
    run_population,
)
from agents.rules import BackoffOnLossSpike, ClipOnGradSpike, ForkSearch, RollbackOnDrop
from agents.scripted import NoOp
from trainenv.audit import (
    NOOP,
    UNPERTURBED,
    ControllerSummary,
    ResultStore,
    summarize_controllers,
    write_controller_report,
)


def check_heldout(split: SeedSplit) -> None:
    """Raise ``ValueError`` unless ``split`` shares no run or schedule seed with training."""
    if not split.isdisjoint(TRAIN_SPLIT):
        raise ValueError(
            f"split: the {split.name!r} seeds (runs {split.run}, schedules {split.schedule}) "
            f"overlap the training split (runs {TRAIN_SPLIT.run}, schedules "
            f"{TRAIN_SPLIT.schedule})"
        )


def heldout_episodes(n: int, split: SeedSplit = HELDOUT_SPLIT, start: int = 0) -> list[Episode]:
    """Episodes ``start .. start + n - 1`` of ``split``: run seed and schedule seed ``i``."""
    check_heldout(split)
    room = min(len(split.run), len(split.schedule))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= room - start or start < 0:
        raise ValueError(f"n must be an integer in [1, {room - start}] (start {start}), got {n!r}")
    return [Episode(split.run[start + i], split.schedule[start + i]) for i in range(n)]


def rule_controllers(env: AdversaryWrapper) -> dict[str, ControllerFactory]:
    """The rule-based controllers of :mod:`agents.rules` (default settings) whose stabilizers
    the agent of ``env`` may apply."""
    offered = {i.name for i in env.agent_spec.interventions}
    rules: dict[str, tuple[ControllerFactory, set[str]]] = {
        "clip on grad spike": (ClipOnGradSpike, {"grad_clip"}),
        "backoff on loss spike": (BackoffOnLossSpike, {"lr_backoff"}),
        "rollback on drop": (RollbackOnDrop, {"rollback"}),
        "fork search": (ForkSearch, {"lr_backoff", "grad_clip"}),
    }
    return {name: make for name, (make, needs) in rules.items() if needs <= offered}


# -- running -----------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`: per-episode ``runs`` (one row per controller and
    episode) and the per-controller ``summary``
    (:class:`~trainenv.audit.controllers.ControllerSummary`)."""

    runs: pd.DataFrame
    summary: ControllerSummary

    def table(self) -> str:
        """The summary as an aligned text table."""
        return self.summary.text()


def evaluate(
    env: AdversaryWrapper,
    controllers: Mapping[str, ControllerFactory],
    episodes: Sequence[Episode],
    *,
    unperturbed: bool = True,
    noop: bool = True,
    out: str | Path | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    population: bool | None = None,
    members: int = 32,
) -> Evaluation:
    """Run every controller on every episode of ``env`` and summarise.

    Args:
        env: The adversarial environment, drawing from a held-out split.
        controllers: Name -> factory (the no-op is added first as :data:`NOOP` if absent and
            ``noop``).
        episodes: The episodes, e.g. :func:`heldout_episodes`.
        unperturbed: Also run the no-op without shocks (:data:`UNPERTURBED`).
        noop: Add the no-op controller (off: when the baselines were evaluated once already
            on the same episodes, e.g. for each of several trainings).
        out: Directory for the results store, ``report.md`` and the figure (``None``:
            nothing written). It must not already hold results.
        n_boot, confidence: Bootstrap resamples and CI level.
        population: Run the episodes as population members (:func:`run_population`) rather
            than one at a time; ``None``: wherever the env has a population form. Controllers
            with ``needs_single_env`` run one at a time regardless.
        members: At most this many members per population (more episodes: several in turn).
    """
    check_heldout(env.split)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be an integer >= 1, got {members!r}")
    if population is None:
        population = has_population(env)
    elif population and not has_population(env):
        raise ValueError(f"population: {env_name(env)} has no population form")
    if not episodes:
        raise ValueError("episodes: need at least one")
    if not (controllers or noop or unperturbed):
        raise ValueError("controllers: none to evaluate (no-op and unperturbed are off)")
    for e in episodes:
        env.split.check("run", e.run_seed)
        env.split.check("schedule", e.schedule_seed)
    store = _empty_store(out) if out is not None else None
    factories: dict[str, ControllerFactory] = {NOOP: NoOp} if noop else {}
    factories.update(controllers)
    runs: list[tuple[AdversaryWrapper, str, ControllerFactory]] = []
    if unperturbed:
        calm = env.with_distribution(env.distribution.model_copy(update={"shocks": (0, 0)}))
        runs.append((calm, UNPERTURBED, NoOp))
    runs += [(env, name, make) for name, make in factories.items()]
    rows = []
    for index, (run_env, name, make) in enumerate(runs):
        controller = make(run_env)
        if population and not getattr(controller, "needs_single_env", False):
            records = run_population(run_env, name, make, episodes, members)
        else:
            records = [run_episode(run_env, name, controller, e) for e in episodes]
        for record in records:
            record.row["controller_index"] = index  # the table's order, kept in the store
            rows.append(record.row)
            if store is not None:
                store.write(record)
    frame = pd.DataFrame(rows)
    if store is None:
        return Evaluation(frame, summarize_controllers(frame, n_boot, confidence))
    return Evaluation(frame, write_controller_report(store.root, n_boot, confidence)[1])


def load_evaluation(
    directory: str | Path, env: AdversaryWrapper, episodes: Sequence[Episode]
) -> Evaluation:
    """A finished :func:`evaluate` results store, checked to be on ``env``'s distribution and
    on exactly ``episodes`` (so that its no-op, rules and unperturbed rows can stand beside a
    new evaluation of a learned controller on the same episodes)."""
    store = ResultStore(directory)
    if not store.finished():
        raise ValueError(f"directory: {store.root} holds no finished evaluation")
    runs = store.runs()
    expected = {(e.run_seed, e.schedule_seed) for e in episodes}
    for name, group in runs.groupby("controller", sort=False):
        if set(zip(group["seed"], group["schedule_seed"])) != expected:
            raise ValueError(
                f"directory: controller {name!r} was evaluated on other episodes than the "
                f"{len(expected)} asked for"
            )
    # The unperturbed rows carry the calm (no-shock) distribution: compare the others.
    shocked = runs[runs["controller"] != UNPERTURBED]
    if set(shocked["distribution"]) != {env.distribution.model_dump_json()}:
        raise ValueError("directory: evaluated under another adversary's distribution")
    return Evaluation(runs, summarize_controllers(runs))


def _empty_store(out: str | Path) -> ResultStore:
    store = ResultStore(out)
    if store.finished():
        raise ValueError(f"out: {store.root} already holds results; choose a new directory")
    store.prepare()
    return store


# -- spread over trainings ---------------------------------------------------------------------
SPREAD_METRICS = ("collapsed", "final_p")
"""The metrics :func:`spread_table` spreads: the collapse rate and the final ``p``."""


def spread_table(summaries: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The spread over independent evaluations (e.g. one per controller training).

    Args:
        summaries: ``ControllerSummary.table`` frames (one row per controller with at least
            ``controller``, ``collapsed`` and ``final_p``, each a mean over episodes), one per
            training; a controller that does not depend on training (no-op, rules, unperturbed)
            may appear in one of them only.

    Returns:
        One row per controller in order of first appearance: ``trainings`` (how many frames
        have it), and for each of :data:`SPREAD_METRICS` the median over those frames
        (``collapsed``, ``final_p``: what :func:`check_targets` reads) with ``<metric>_min``
        and ``<metric>_max``.
    """
    if not summaries:
        raise ValueError("summaries: need at least one evaluation")
    for i, table in enumerate(summaries):
        missing = sorted({"controller", *SPREAD_METRICS} - set(table.columns))
        if missing:
            raise ValueError(f"summaries[{i}]: columns {missing} are missing")
    frame = pd.concat([t[["controller", *SPREAD_METRICS]] for t in summaries], ignore_index=True)
    grouped = frame.groupby("controller", sort=False)
    table = pd.DataFrame({"trainings": grouped.size()})
    for metric in SPREAD_METRICS:
        table[metric] = grouped[metric].median()
        table[metric + "_min"] = grouped[metric].min()
        table[metric + "_max"] = grouped[metric].max()
    return table.reset_index()


def format_spread(table: pd.DataFrame) -> str:
    """:func:`spread_table` as aligned text: per controller the number of trainings and each
    metric as ``median [min, max]``."""
    headers = ["controller", "trainings", "collapse rate median [min, max]",
               "final p median [min, max]"]  # fmt: skip
    cells = [
        [str(r["controller"]), str(r["trainings"])]
        + [f"{r[m]:.3f} [{r[m + '_min']:.3f}, {r[m + '_max']:.3f}]" for m in SPREAD_METRICS]
        for _, r in table.iterrows()
    ]
    widths = [max(len(row[c]) for row in [headers, *cells]) for c in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
        for row in [headers, *cells]
    )


# -- targets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """One target of the issue, checked on point estimates (the CIs are in the table)."""

    target: str
    met: bool
    detail: str


def check_targets(
    summary: ControllerSummary | pd.DataFrame,
    learned: str,
    rules: Sequence[str],
    tolerance: float = 0.05,
) -> list[Verdict]:
    """The targets for a learned controller: collapse rate at most half the no-op's; final
    ``p`` within ``tolerance`` (relative) of the unperturbed run's; and at least as good as the
    best rule-based controller (the lowest collapse rate, ties broken by final ``p``): a
    collapse rate no higher and a final ``p`` no lower.

    ``summary``: an evaluation's summary, or a :func:`spread_table` (its medians are checked).
    """
    table = summary.table if isinstance(summary, ControllerSummary) else summary
    by = table.set_index("controller")
    missing = [c for c in (learned, NOOP, UNPERTURBED, *rules) if c not in by.index]
    if missing:
        raise ValueError(f"summary: controllers {missing} are missing; have {list(by.index)}")
    me, noop, calm = by.loc[learned], by.loc[NOOP], by.loc[UNPERTURBED]
    verdicts = [
        Verdict(
            "collapse rate at most half the no-op's",
            bool(me.collapsed <= noop.collapsed / 2),
            f"{me.collapsed:.3f} vs no-op {noop.collapsed:.3f}"
            + (" (vacuous: no-op never collapsed)" if noop.collapsed == 0 else ""),
        ),
        Verdict(
            f"final p within {tolerance:.0%} of the unperturbed run's",
            bool(me.final_p >= (1 - tolerance) * calm.final_p),
            f"{me.final_p:.3f} vs unperturbed {calm.final_p:.3f} "
            f"(ratio {me.final_p / calm.final_p:.3f})",
        ),
    ]
    if rules:
        best = min(rules, key=lambda r: (by.loc[r].collapsed, -by.loc[r].final_p))
        other = by.loc[best]
        verdicts.append(
            Verdict(
                "at least as good as the best rule-based controller",
                bool(me.collapsed <= other.collapsed and me.final_p >= other.final_p),
                f"collapse {me.collapsed:.3f} vs {other.collapsed:.3f}, final p "
                f"{me.final_p:.3f} vs {other.final_p:.3f} ({best})",
            )
        )
    return verdicts


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    return "\n".join(f"[{'met' if v.met else 'NOT met'}] {v.target}: {v.detail}" for v in verdicts)


# -- command line ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    from agents.train_controller import PolicyController, load_config, load_controller

    parser = argparse.ArgumentParser(
        prog="python -m agents.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory", type=Path, help="output directory of train_controller")
    parser.add_argument("--episodes", type=int, default=30, help="held-out episodes")
    parser.add_argument("--out", type=Path, help="results directory (default: DIR/evaluation)")
    parser.add_argument("--no-rules", action="store_true", help="skip the rule-based controllers")
    parser.add_argument(
        "--per-run", action="store_true",
        help="one episode at a time even where the env has a population form",
    )  # fmt: skip
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="also load an old pickled model.zip; unpickling can run code from the file, so "
        "pass this only for a file you trust",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = load_config(args.directory).make_env(HELDOUT_SPLIT)
    rules = {} if args.no_rules else rule_controllers(env)
    try:  # before any episode: a folder that needs --trust-pickle fails here
        model = load_controller(args.directory, env, trust_pickle=args.trust_pickle).model
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))  # one line, exit 2
    controllers = {**rules, "learned": lambda e: PolicyController(model, e)}
    out = args.out or args.directory / "evaluation"
    evaluation = evaluate(
        env, controllers, heldout_episodes(args.episodes), out=out,
        population=False if args.per_run else None,
    )  # fmt: skip
    print(evaluation.table())
    print(format_verdicts(check_targets(evaluation.summary, "learned", list(rules))))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
