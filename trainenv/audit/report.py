"""The Markdown + PNG report of an audit: ``report.md`` and ``figures/*.png`` from its stored
results and their :class:`~trainenv.audit.summary.Summary`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainenv.audit.formatting import (
    format_table,
    pyplot,
    save_figure,
)
from trainenv.audit.html import write_html
from trainenv.audit.metrics import CollapseRule, collapse_rule
from trainenv.audit.store import ResultStore
from trainenv.audit.summary import (
    CENSORING_LEGEND,
    CENSORING_MARK,
    DIMENSIONS,
    MARGIN_DEFINITION,
    NON_MONOTONE_LEGEND,
    Summary,
    in_report_order,
    margin_rows,
    metric_rows,
    profile_rows,
    summarize,
)
from trainenv.core import interventions as registry


def write_report(
    out: str | Path, n_boot: int = 1000, confidence: float = 0.95
) -> tuple[Path, Summary]:
    """Write ``report.md``, ``figures/*.png`` and ``report.html`` (the same, one self-contained
    page) under ``out`` from its stored results."""
    store = ResultStore(out)
    runs = store.runs()
    summary = summarize(runs, n_boot, confidence)
    figures = store.root / "figures"
    figures.mkdir(exist_ok=True)
    paths = {"profile": figures / "profile.png", "margins": figures / "margin_curves.png"}
    plot_profile(summary, paths["profile"])
    plot_margin_curves(summary, paths["margins"])
    for recipe in summary.margins["recipe"].unique():
        path = figures / f"trajectories_{_slug(recipe)}.png"
        plot_trajectories(store, runs, str(recipe), path)
        paths[f"trajectories of {recipe}"] = path
    report = store.root / "report.md"
    report.write_text(_markdown(summary, runs, store.root, paths))
    write_html(report)
    return report, summary


def _markdown(summary: Summary, runs: pd.DataFrame, root: Path, paths: dict[str, Path]) -> str:
    rel = {k: p.relative_to(root).as_posix() for k, p in paths.items()}

    def values(column: str) -> str:
        return ", ".join(f"{v:g}" for v in sorted(runs[column].dropna().unique()))

    lines = [
        "# Stability audit",
        "",
        f"{len(runs)} runs: recipes {', '.join(sorted(map(str, runs['recipe'].unique())))}; "
        f"seeds {values('seed')}; onsets {values('onset')} (steps); horizon "
        f"{values('horizon')} steps; recovery tolerance {values('tolerance')} (in p).",
        "",
        "Each perturbed run is compared with its unperturbed fork from the same state (common "
        "random numbers). Performance `p` is normalised: 0 = chance, 1 = the trainer's ceiling. "
        f"Intervals are {summary.confidence:.0%} percentile bootstrap intervals over seeds.",
        "",
        "## Stability profile",
        "",
        "Margin per dimension, as a position in the registered range of the dimension's weakest "
        "intervention (0 = low end, 1 = high end, geometric for log-scale interventions). "
        + CENSORING_LEGEND,
        "",
        format_table(*profile_rows(summary), markdown=True),
        "",
        f"![stability profile]({rel['profile']})",
        "",
        "## Margins",
        "",
        f"{MARGIN_DEFINITION} A run collapses when the env's collapse rule fires or it is not "
        "back within the tolerance of its unperturbed fork by the end of the horizon."
        + ("" if summary.margins["monotone"].all() else f" {NON_MONOTONE_LEGEND}"),
        "",
        format_table(*margin_rows(summary), markdown=True),
        "",
        f"![margin curves]({rel['margins']})",
        "",
        "## Trajectories",
        "",
        f"One seed and onset per recipe. {MARKER_LEGEND}; both count as collapses.",
        "",
    ]
    for key, path in rel.items():
        if key.startswith("trajectories"):
            lines += [f"![{key}]({path})", ""]
    lines += [
        "## Metrics per magnitude",
        "",
        "drawdown: largest gap below the unperturbed branch; area: mean absolute gap over the "
        "horizon; final gap: unperturbed minus perturbed at the horizon's end (all in p); "
        "recovery: steps until back within the tolerance for good (inf: never).",
        "",
        format_table(*metric_rows(summary), markdown=True),
        "",
    ]
    for b in summary.baselines.itertuples():
        lines.append(
            f"Unperturbed runs of {b.recipe}: {b.runs}, of which {b.collapsed} "
            "collapsed on their own."
        )
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def plot_profile(summary: Summary, path: Path) -> None:
    """Grouped bars: the four margins (positions) side by side, one bar per recipe."""
    plt = pyplot()
    recipes = list(summary.profile["recipe"].unique())
    width = 0.8 / max(len(recipes), 1)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    x = np.arange(len(DIMENSIONS))
    for k, recipe in enumerate(recipes):
        rows = summary.profile[summary.profile["recipe"] == recipe].set_index("dimension")
        for i, dim in enumerate(DIMENSIONS):
            xi = x[i] - 0.4 + width * (k + 0.5)
            if dim not in rows.index:
                ax.text(xi, 0.02, "not\ntested", ha="center", fontsize=7, color="grey")
                continue
            r = rows.loc[dim]
            err = [[max(r.position - r.position_lo, 0)], [max(r.position_hi - r.position, 0)]]
            hatch = "//" if r.censored != "none" else None
            ax.bar(
                xi,
                r.position,
                width * 0.95,
                color=f"C{k}",
                yerr=err,
                capsize=3,
                hatch=hatch,
                edgecolor="white",
            )
            ax.text(
                xi,
                max(r.position_hi, r.position) + 0.02,
                f"{CENSORING_MARK[r.censored]}{r.position:.2f}",
                ha="center",
                fontsize=7,
            )
            ax.text(
                xi,
                0.03,
                r.limiting,
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                color="white",
            )
    ax.set_xticks(x, DIMENSIONS)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("margin: position in the intervention's range")
    ax.set_title(
        "Stability profile (higher = tolerates larger perturbations)\n"
        "bar label: weakest intervention; hatched: censored at the grid's edge",
        fontsize=10,
    )
    from matplotlib.patches import Patch

    handles = [Patch(color=f"C{k}", label=recipe) for k, recipe in enumerate(recipes)]
    ax.legend(
        handles=handles,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=min(len(recipes), 3),
        frameon=False,
    )
    save_figure(fig, path)


def plot_margin_curves(summary: Summary, path: Path) -> None:
    """Collapse rate vs magnitude per intervention, one line per recipe, margins marked."""
    plt = pyplot()
    names = list(summary.margins["intervention"].unique())
    fig, axes = _subplot_grid(plt, len(names))
    recipes = list(summary.table["recipe"].unique())
    for ax, name in zip(axes, names):
        intervention = registry.get(name)
        table = summary.table[summary.table["intervention"] == name]
        for recipe, rows in table.groupby("recipe", sort=False):
            k = recipes.index(recipe)
            err = [
                rows["collapse_rate"] - rows["collapse_rate_lo"],
                rows["collapse_rate_hi"] - rows["collapse_rate"],
            ]
            ax.errorbar(
                rows["magnitude"],
                rows["collapse_rate"],
                yerr=err,
                capsize=3,
                color=f"C{k}",
                marker="osD^v"[k % 5],
                ls=["-", "--", ":"][k % 3],
                ms=7 - k,
                label=recipe,
            )
            m = summary.margins[
                (summary.margins["recipe"] == recipe) & (summary.margins["intervention"] == name)
            ].iloc[0]
            if not math.isnan(m.margin):
                ax.axvline(m.margin, color=f"C{k}", ls=":", lw=1)
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        grid = np.unique(table["magnitude"])
        if intervention.log_scale:
            ax.set_xscale("log")
        ax.set_xticks(grid, [f"{m:g}" for m in grid], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{name} ({intervention.dimension.value})", fontsize=9)
        ax.set_xlabel(f"magnitude: {intervention.description}", fontsize=7, wrap=True)
        ax.set_ylabel("collapse rate", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Collapse rate vs magnitude (dotted: margin; dashed: half of the seeds)")
    save_figure(fig, path)


MARKERS: dict[CollapseRule, str] = {"env collapse": "x", "no recovery": "o"}
MARKER_LEGEND = (
    "x: env collapse (the env's collapse rule ended the run); o: no recovery (not back within "
    "the tolerance of the unperturbed run by the end of the horizon)"
)


@dataclass(frozen=True)
class CollapseMarker:
    """A marker on a trajectory figure: a run the metrics count as collapsed, at its last step
    (``step``, ``p``), and the rule that counted it
    (:data:`~trainenv.audit.metrics.CollapseRule`)."""

    run_id: str
    intervention: str
    magnitude: float
    step: int
    p: float
    rule: CollapseRule


def collapse_marker(run: Any, steps: np.ndarray, p: np.ndarray) -> CollapseMarker | None:
    """The marker of a perturbed run (a runs-table row with ``collapse_reason`` and
    ``recovery_time``) whose curve is ``steps``, ``p`` (shape ``(n,)``); ``None`` unless the
    metrics count it as collapsed."""
    rule = collapse_rule(isinstance(run.collapse_reason, str), float(run.recovery_time))
    if rule is None:
        return None
    return CollapseMarker(
        str(run.run_id), str(run.intervention), float(run.magnitude), int(steps[-1]),
        float(p[-1]), rule,
    )  # fmt: skip


def plot_trajectories(
    store: ResultStore, runs: pd.DataFrame, recipe: str, path: Path
) -> list[CollapseMarker]:
    """Per intervention, one seed and onset: the unperturbed branch and each perturbed one,
    with the perturbation window shaded and every collapsed run marked by the rule that counted
    it. Returns the markers drawn."""
    plt = pyplot()
    runs = runs[runs["recipe"] == recipe]
    seed, onset = runs["seed"].min(), runs["onset"].min()
    pair = runs[(runs["seed"] == seed) & (runs["onset"] == onset)]
    steps = store.steps(pair["run_id"])
    base_id = pair.loc[pair["kind"] == "baseline", "run_id"]
    base = steps[steps["run_id"].isin(base_id)].sort_values("step")
    names = list(in_report_order(pair[pair["kind"] == "perturbed"])["intervention"].unique())
    fig, axes = _subplot_grid(plt, len(names))
    cmap = plt.get_cmap("viridis")
    markers: list[CollapseMarker] = []
    for ax, name in zip(axes, names):
        runs_i = pair[pair["intervention"] == name].sort_values("magnitude")
        window = int(runs_i["duration"].iloc[0])
        ax.axvspan(onset, onset + window, color="orange", alpha=0.2, lw=0, label="perturbation")
        ax.plot(base["step"], base["p"], color="black", lw=2, label="unperturbed")
        for j, r in enumerate(runs_i.itertuples()):
            s = steps[steps["run_id"] == r.run_id].sort_values("step")
            x = np.concatenate([[onset], s["step"]])
            y = np.concatenate([base.loc[base["step"] == onset, "p"].to_numpy()[:1], s["p"]])
            color = cmap(j / max(len(runs_i) - 1, 1) * 0.9)
            ax.plot(x, y, color=color, lw=1.2, label=f"{r.magnitude:g}")
            marker = collapse_marker(r, x, y)
            if marker is not None:
                markers.append(marker)
                ax.plot(marker.step, marker.p, MARKERS[marker.rule], color="red", ms=8, mfc="none")
        ax.set_title(f"{name}, seed {seed}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("p", fontsize=8)
        ax.legend(fontsize=6, title="magnitude", title_fontsize=6)
    fig.suptitle(
        f"{recipe}: perturbed vs unperturbed (shaded: perturbation)\n"
        "x: env collapse (terminated); o: no recovery within the horizon",
        fontsize=9,
    )
    save_figure(fig, path)
    return markers


def _subplot_grid(plt: Any, n: int) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])
