"""The evaluation protocol for controllers: held-out runs under held-out adversarial schedules.

Every controller meets the same episodes: episode ``i`` is run seed ``i`` and schedule seed
``i`` of :data:`~agents.adversary.HELDOUT_SPLIT`, whose seed ranges are disjoint from the
training split's (checked before anything runs), so no evaluated run or schedule was seen in
training. The *unperturbed* row is the no-op controller on the same run seeds with no shocks:
the reference for final performance.

Per episode (``p`` is normalised performance, 0 = chance, 1 = the trainer's ceiling; an episode
has ``H = max_steps`` steps, and after a collapse ``p`` counts as 0 for the rest of it, as in
the audit's metrics):

- ``collapsed``: the env's collapse rule ended the run;
- ``final_p``: ``p`` after the last step ``H``;
- ``auc``: area under the performance curve, ``(1/H) sum_t p_t``, in ``[0, 1]``-ish units of p;
- ``cost``: summed registry ``cost`` of the stabilizers the controller applied.

Per controller: the mean of each over episodes with a percentile bootstrap CI over episodes
(:func:`~trainenv.audit.metrics.bootstrap_ci`). Results go to a
:class:`~trainenv.audit.store.ResultStore` in the audit's layout (one ``runs/`` row and one
``steps/`` table per controller and episode, ``kind="controller"``), with ``evaluation.md``
and ``figures/controllers.png``.

::

    python -m agents.evaluate runs/ctl --episodes 30      # a directory of train_controller
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from agents.adversary import HELDOUT_SPLIT, TRAIN_SPLIT, AdversaryWrapper, SeedSplit
from agents.encoding import unwrap
from agents.rules import BackoffOnLossSpike, ClipOnGradSpike, ForkSearch, RollbackOnDrop
from agents.scripted import NoOp
from trainenv.audit.metrics import bootstrap_ci
from trainenv.audit.report import format_table
from trainenv.audit.runner import _step_row, run_id
from trainenv.audit.store import ResultStore, RunRecord
from trainenv.core import interventions as registry
from trainenv.core.interventions import Role

NOOP, UNPERTURBED = "no-op", "unperturbed"
METRICS = ("collapsed", "final_p", "auc", "cost")
_LABELS = {"collapsed": "collapse rate", "final_p": "final p", "auc": "AUC", "cost": "cost"}


class Controller(Protocol):
    """What :func:`evaluate` drives: the protocol of every controller in :mod:`agents`."""

    def reset(self) -> None: ...

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any: ...


ControllerFactory = Callable[[AdversaryWrapper], Controller]
"""Builds a controller on the evaluation env; its ``act`` returns an action of the inner
env's space (:meth:`AdversaryWrapper.step_inner`), as :func:`agents.encode` builds it."""


@dataclass(frozen=True)
class Episode:
    """One evaluation episode: the run seed and the adversary's schedule seed."""

    run_seed: int
    schedule_seed: int


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
    episode) and the per-controller ``summary`` (see :func:`summarize`)."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    confidence: float

    def table(self) -> str:
        """The summary as an aligned text table."""
        return format_summary(self.summary, self.confidence)


def evaluate(
    env: AdversaryWrapper,
    controllers: Mapping[str, ControllerFactory],
    episodes: Sequence[Episode],
    *,
    unperturbed: bool = True,
    out: str | Path | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> Evaluation:
    """Run every controller on every episode of ``env`` and summarise.

    Args:
        env: The adversarial environment, drawing from a held-out split.
        controllers: Name -> factory (the no-op is added first as :data:`NOOP` if absent).
        episodes: The episodes, e.g. :func:`heldout_episodes`.
        unperturbed: Also run the no-op without shocks (:data:`UNPERTURBED`).
        out: Directory for the results store, ``evaluation.md`` and the figure (``None``:
            nothing written). It must not already hold results.
        n_boot, confidence: Bootstrap resamples and CI level.
    """
    check_heldout(env.split)
    if not episodes:
        raise ValueError("episodes: need at least one")
    for e in episodes:
        env.split.check("run", e.run_seed)
        env.split.check("schedule", e.schedule_seed)
    store = _empty_store(out) if out is not None else None
    factories: dict[str, ControllerFactory] = {NOOP: NoOp, **controllers}
    runs: list[tuple[AdversaryWrapper, str, ControllerFactory]] = []
    if unperturbed:
        calm = env.with_distribution(env.distribution.model_copy(update={"shocks": (0, 0)}))
        runs.append((calm, UNPERTURBED, NoOp))
    runs += [(env, name, make) for name, make in factories.items()]
    rows = []
    for index, (run_env, name, make) in enumerate(runs):
        controller = make(run_env)
        for episode in episodes:
            record = run_episode(run_env, name, controller, episode)
            record.row["controller_index"] = index  # the table's order, kept in the store
            rows.append(record.row)
            if store is not None:
                store.write(record)
    frame = pd.DataFrame(rows)
    evaluation = Evaluation(frame, summarize(frame, n_boot, confidence), confidence)
    if store is not None:
        write_evaluation_report(store.root, n_boot, confidence)
    return evaluation


def run_episode(
    env: AdversaryWrapper, name: str, controller: Controller, episode: Episode
) -> RunRecord:
    """One episode of ``controller`` (labelled ``name``) on ``env``, as an audit-store record:
    its row (keys and the metrics of the module docstring) and its steps."""
    started = time.perf_counter()
    inner = unwrap(env)
    keys = {
        "recipe": name,
        "env": inner.spec.id if inner.spec else type(inner.trainer).__name__,
        "distribution": env.distribution.model_dump_json(),
        "seed": episode.run_seed,
        "schedule_seed": episode.schedule_seed,
    }
    rid = run_id(keys)
    obs, info = env.reset(
        options={"run_seed": episode.run_seed, "schedule_seed": episode.schedule_seed}
    )
    controller.reset()
    steps = [_step_row(rid, 0, obs, info)]
    p = np.zeros(inner.max_steps)
    cost, interventions = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step_inner(controller.act(obs, info))
        steps.append(_step_row(rid, len(steps), obs, info))
        p[len(steps) - 2] = info["p"]
        stabilizers = [registry.get(n) for n, _ in info["applied"]]
        stabilizers = [i for i in stabilizers if i.role is Role.STABILIZER]
        cost += sum(i.cost for i in stabilizers)
        interventions += len(stabilizers)
    collapse = info["collapse"]
    row = {
        **keys,
        "run_id": rid,
        "kind": "controller",
        "status": "ok",
        "controller": name,
        "schedule": env.schedule.describe() if env.schedule else "none",
        "horizon": inner.max_steps,
        "collapsed": collapse is not None,
        "collapse_reason": collapse,
        "final_p": float(p[-1]),
        "auc": float(p.mean()),
        "cost": cost,
        "interventions": interventions,
        "steps_run": len(steps) - 1,
        "wall_s": time.perf_counter() - started,
    }
    return RunRecord(row, steps)


def _empty_store(out: str | Path) -> ResultStore:
    store = ResultStore(out)
    if store.finished():
        raise ValueError(f"out: {store.root} already holds results; choose a new directory")
    store.prepare()
    return store


# -- summaries ---------------------------------------------------------------------------------
def summarize(runs: pd.DataFrame, n_boot: int = 1000, confidence: float = 0.95) -> pd.DataFrame:
    """Per controller (in order of appearance): ``n`` episodes and, for each of
    :data:`METRICS`, the mean over episodes and ``<metric>_lo``/``<metric>_hi``, its bootstrap
    CI (episodes resampled). ``collapsed`` is the collapse rate."""
    if runs.empty or "controller" not in runs:
        raise ValueError("runs: no controller evaluation to summarise")
    rows = []
    for name, group in runs.groupby("controller", sort=False):
        row: dict[str, Any] = {"controller": name, "n": len(group)}
        for metric in METRICS:
            values = group[metric].to_numpy(dtype=float)
            row[metric] = float(values.mean())
            row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_ci(
                partial(_resampled_means, values), len(values), n_boot, confidence
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _resampled_means(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (shape ``(n,)``) over each resample of ``draws`` ``(B, n)``."""
    return values[draws].mean(axis=1)


def summary_rows(summary: pd.DataFrame, confidence: float) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the summary table: each metric as ``mean [lo, hi]``."""
    headers = ["controller", "n", *(f"{_LABELS[m]} [{confidence:.0%} CI]" for m in METRICS)]
    cells = []
    for r in summary.itertuples():
        values = [
            f"{getattr(r, m):.3f} [{getattr(r, m + '_lo'):.3f}, {getattr(r, m + '_hi'):.3f}]"
            for m in METRICS
        ]
        cells.append([str(r.controller), str(r.n), *values])
    return headers, cells


def format_summary(summary: pd.DataFrame, confidence: float = 0.95) -> str:
    """The summary as an aligned text table."""
    return format_table(*summary_rows(summary, confidence), markdown=False)


@dataclass(frozen=True)
class Verdict:
    """One target of the issue, checked on point estimates (the CIs are in the table)."""

    target: str
    met: bool
    detail: str


def check_targets(
    summary: pd.DataFrame, learned: str, rules: Sequence[str], tolerance: float = 0.05
) -> list[Verdict]:
    """The targets for a learned controller: collapse rate at most half the no-op's; final
    ``p`` within ``tolerance`` (relative) of the unperturbed run's; and at least as good as the
    best rule-based controller (the lowest collapse rate, ties broken by final ``p``): a
    collapse rate no higher and a final ``p`` no lower."""
    by = summary.set_index("controller")
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


# -- the report --------------------------------------------------------------------------------
def write_evaluation_report(out: str | Path, n_boot: int = 1000, confidence: float = 0.95) -> Path:
    """Write ``evaluation.md`` and ``figures/controllers.png`` under ``out`` from its store."""
    store = ResultStore(out)
    runs = store.runs()
    if runs.empty or "controller_index" not in runs:
        raise ValueError(f"out: {store.root} holds no controller evaluation")
    runs = runs[runs["kind"] == "controller"].sort_values(["controller_index", "seed"])
    summary = summarize(runs, n_boot, confidence)
    figure = store.root / "figures" / "controllers.png"
    figure.parent.mkdir(exist_ok=True)
    plot_controllers(runs, store.steps(runs["run_id"]), summary, figure)
    first = runs.iloc[0]
    shocked = runs.loc[runs["controller"] != UNPERTURBED, "distribution"]
    adversary = shocked.iloc[0] if len(shocked) else first["distribution"]
    lines = [
        "# Controller evaluation",
        "",
        f"{first['env']}: {runs['seed'].nunique()} held-out run seeds, each under a held-out "
        f"adversarial schedule; {len(summary)} controllers; episodes of {first['horizon']} "
        f"steps. Intervals: {confidence:.0%} percentile bootstrap over episodes.",
        "",
        f"Adversary (every row but {UNPERTURBED!r}, which has no shocks): `{adversary}`",
        "",
        format_table(*summary_rows(summary, confidence), markdown=True),
        "",
        "collapse rate: share of episodes the collapse rule ended; final p: normalised "
        "performance after the last step (0 after a collapse); AUC: mean p over the episode; "
        "cost: summed intervention cost of the controller's stabilizers.",
        "",
        f"![controllers]({figure.relative_to(store.root).as_posix()})",
        "",
    ]
    path = store.root / "evaluation.md"
    path.write_text("\n".join(lines))
    return path


def plot_controllers(
    runs: pd.DataFrame, steps: pd.DataFrame, summary: pd.DataFrame, path: Path
) -> None:
    """Left: mean ``p`` per step for each controller (0 after a collapse); right: collapse
    rates with their CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = int(runs["horizon"].max())
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[3, 2])
    for k, name in enumerate(summary["controller"]):
        ids = runs.loc[runs["controller"] == name, "run_id"]
        curves = np.zeros((len(ids), horizon))
        for j, rid in enumerate(ids):
            s = steps[(steps["run_id"] == rid) & (steps["step"] > 0)]
            curves[j, s["step"].to_numpy() - 1] = s["p"].to_numpy()
        left.plot(np.arange(1, horizon + 1), curves.mean(axis=0), color=f"C{k}", label=name)
    left.set_xlabel("step")
    left.set_ylabel("mean p (0 after a collapse)")
    left.legend(fontsize=8)
    rate = summary["collapsed"]
    err = [rate - summary["collapsed_lo"], summary["collapsed_hi"] - rate]
    colors = [f"C{k}" for k in range(len(summary))]
    right.barh(summary["controller"], rate, xerr=err, color=colors, capsize=3)
    right.invert_yaxis()
    right.set_xlabel("collapse rate")
    fig.suptitle("Controllers under held-out adversarial schedules")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    from agents.train_controller import load_config, load_controller

    parser = argparse.ArgumentParser(
        prog="python -m agents.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory", type=Path, help="output directory of train_controller")
    parser.add_argument("--episodes", type=int, default=30, help="held-out episodes")
    parser.add_argument("--out", type=Path, help="results directory (default: DIR/evaluation)")
    parser.add_argument("--no-rules", action="store_true", help="skip the rule-based controllers")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = load_config(args.directory).make_env(HELDOUT_SPLIT)
    rules = {} if args.no_rules else rule_controllers(env)
    controllers = {**rules, "learned": lambda e: load_controller(args.directory, e)}
    out = args.out or args.directory / "evaluation"
    evaluation = evaluate(env, controllers, heldout_episodes(args.episodes), out=out)
    print(evaluation.table())
    print(format_verdicts(check_targets(evaluation.summary, "learned", list(rules))))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
