"""Controller evaluations in the audit's results format: summary, table, Markdown and figure.

A controller evaluation (:mod:`agents.evaluate` writes one) stores one ``runs/`` row per
controller and episode with ``kind="controller"`` and the per-episode metrics below, and one
``steps/`` table per run, in a :class:`~trainenv.audit.store.ResultStore`. ``trainenv report
DIR`` recognises such a store and renders it with :func:`write_controller_report`.

Per episode (``p`` is normalised performance, 0 = chance, 1 = the trainer's ceiling; an
episode has ``H`` steps, and after a collapse ``p`` counts as 0 for the rest of it):

- ``collapsed``: the env's collapse rule ended the run;
- ``final_p``: ``p`` after the last step ``H``;
- ``auc``: area under the performance curve, ``(1/H) sum_t p_t``, in units of p;
- ``cost``: summed registry ``cost`` of the stabilizers the controller applied.

Per controller: the mean of each over episodes with a percentile bootstrap CI over episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainenv.audit.formatting import format_table, pyplot, save_figure
from trainenv.audit.html import write_html
from trainenv.audit.metrics import mean_ci
from trainenv.audit.store import ResultStore

CONTROLLER = "controller"  # the ``kind`` of a controller-evaluation row
NOOP, UNPERTURBED = "no-op", "unperturbed"
METRICS = ("collapsed", "final_p", "auc", "cost")
_LABELS = {"collapsed": "collapse rate", "final_p": "final p", "auc": "AUC", "cost": "cost"}


@dataclass
class ControllerSummary:
    """Per controller (in evaluation order): ``n`` episodes and, for each of :data:`METRICS`,
    the mean over episodes with ``<metric>_lo``/``<metric>_hi``, its CI at ``confidence``.
    ``collapsed`` is the collapse rate."""

    table: pd.DataFrame
    confidence: float

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """Headers and cells of the summary table: each metric as ``mean [lo, hi]``."""
        level = f"{self.confidence:.0%} CI"
        headers = ["controller", "n", *(f"{_LABELS[m]} [{level}]" for m in METRICS)]
        cells = []
        for r in self.table.itertuples():
            values = [
                f"{getattr(r, m):.3f} [{getattr(r, m + '_lo'):.3f}, {getattr(r, m + '_hi'):.3f}]"
                for m in METRICS
            ]
            cells.append([str(r.controller), str(r.n), *values])
        return headers, cells

    def text(self) -> str:
        """The summary as an aligned text table."""
        return format_table(*self.rows(), markdown=False)


def is_controller_evaluation(runs: pd.DataFrame) -> bool:
    """Whether a runs table (:meth:`ResultStore.runs`) holds a controller evaluation."""
    return "kind" in runs and bool((runs["kind"] == CONTROLLER).any())


def summarize_controllers(
    runs: pd.DataFrame, n_boot: int = 1000, confidence: float = 0.95
) -> ControllerSummary:
    """Summarise the controller rows of ``runs``, in order of ``controller_index`` where the
    rows have it (the evaluation's order), else of appearance."""
    if not is_controller_evaluation(runs):
        raise ValueError("runs: no controller evaluation to summarise")
    runs = runs[runs["kind"] == CONTROLLER]
    if "controller_index" in runs:
        runs = runs.sort_values(["controller_index", "seed"], kind="stable")
    rows = []
    for name, group in runs.groupby("controller", sort=False):
        row: dict[str, object] = {"controller": name, "n": len(group)}
        for metric in METRICS:
            values = group[metric].to_numpy(dtype=float)
            row[metric] = float(values.mean())
            row[f"{metric}_lo"], row[f"{metric}_hi"] = mean_ci(values, n_boot, confidence)
        rows.append(row)
    return ControllerSummary(pd.DataFrame(rows), confidence)


def write_controller_report(
    out: str | Path, n_boot: int = 1000, confidence: float = 0.95
) -> tuple[Path, ControllerSummary]:
    """Write ``report.md``, ``figures/controllers.png`` and ``report.html`` (the same, one
    self-contained page) under ``out`` from its store."""
    store = ResultStore(out)
    runs = store.runs()
    summary = summarize_controllers(runs, n_boot, confidence)
    runs = runs[runs["kind"] == CONTROLLER]
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
        f"adversarial schedule; {len(summary.table)} controllers; episodes of "
        f"{first['horizon']} steps. Intervals: {confidence:.0%} percentile bootstrap over "
        "episodes.",
        "",
        f"Adversary (every row but {UNPERTURBED!r}, which has no shocks): `{adversary}`",
        "",
        format_table(*summary.rows(), markdown=True),
        "",
        "collapse rate: share of episodes the collapse rule ended; final p: normalised "
        "performance after the last step (0 after a collapse); AUC: mean p over the episode; "
        "cost: summed intervention cost of the controller's stabilizers.",
        "",
        f"![controllers]({figure.relative_to(store.root).as_posix()})",
        "",
    ]
    path = store.root / "report.md"
    path.write_text("\n".join(lines))
    write_html(path)
    return path, summary


def plot_controllers(
    runs: pd.DataFrame, steps: pd.DataFrame, summary: ControllerSummary, path: Path
) -> None:
    """Left: mean ``p`` per step for each controller (0 after a collapse); right: collapse
    rates with their CIs."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.5), width_ratios=[3, 2])
    table = summary.table
    horizon = int(runs["horizon"].max())
    for k, name in enumerate(table["controller"]):
        ids = runs.loc[runs["controller"] == name, "run_id"]
        curves = np.zeros((len(ids), horizon))
        for j, rid in enumerate(ids):
            s = steps[(steps["run_id"] == rid) & (steps["step"] > 0)]
            curves[j, s["step"].to_numpy() - 1] = s["p"].to_numpy()
        left.plot(np.arange(1, horizon + 1), curves.mean(axis=0), color=f"C{k}", label=name)
    left.set_xlabel("step")
    left.set_ylabel("mean p (0 after a collapse)")
    left.legend(fontsize=8)
    rate = table["collapsed"]
    err = [rate - table["collapsed_lo"], table["collapsed_hi"] - rate]
    colors = [f"C{k}" for k in range(len(table))]
    right.barh(table["controller"], rate, xerr=err, color=colors, capsize=3)
    right.invert_yaxis()
    right.set_xlabel("collapse rate")
    fig.suptitle("Controllers under held-out adversarial schedules")
    save_figure(fig, path)
