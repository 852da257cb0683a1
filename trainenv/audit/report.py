"""Summaries, the terminal table, and the Markdown + PNG report of an audit.

:func:`summarize` turns the runs table into per-magnitude metrics, per-intervention margins
and per-recipe stability profiles, each with a bootstrap confidence interval over seeds (the
seed is the independent unit: a seed's results at every magnitude are resampled together).

The profile puts the four dimensions side by side on one scale: a margin's *position* in its
intervention's registered range (0 at ``low``, 1 at ``high``, geometric for log-scale
interventions; see :meth:`Intervention.position`). A dimension's margin is its weakest
intervention's: the smallest position among the dimension's interventions in the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainenv.audit.controllers import is_controller_evaluation
from trainenv.audit.formatting import (
    format_interval,
    format_number,
    format_table,
    pyplot,
    save_figure,
)
from trainenv.audit.metrics import Censoring, bootstrap_ci, margin, mean_ci, nanmean
from trainenv.audit.store import ResultStore
from trainenv.core import interventions as registry
from trainenv.core.interventions import Dimension

DIMENSIONS = tuple(d.value for d in Dimension)
METRICS = ("drawdown", "area", "final_gap")  # averaged with a CI; recovery time: median
_MARK = {"none": "", "above": ">=", "below": "<"}


@dataclass
class Summary:
    """An audit's results in tables (pandas), one row per...

    Attributes:
        table: ...recipe x intervention x magnitude: ``n`` pairs, ``collapse_rate`` and the
            mean ``drawdown``/``area``/``final_gap`` with ``*_lo``/``*_hi`` CIs, median
            ``recovery_time`` (steps; inf when most runs never recover).
        margins: ...recipe x intervention: ``margin`` (magnitude), CI, ``censored``
            (see :data:`~trainenv.audit.metrics.Censoring`), ``position`` in the range.
        profile: ...recipe x dimension: ``position`` margin, CI, ``censored``, and the
            ``limiting`` intervention (missing dimensions are absent).
        baselines: ...recipe: unperturbed runs and how many collapsed on their own.
        confidence: Level of the intervals.
    """

    table: pd.DataFrame
    margins: pd.DataFrame
    profile: pd.DataFrame
    baselines: pd.DataFrame
    confidence: float


def summarize(runs: pd.DataFrame, n_boot: int = 1000, confidence: float = 0.95) -> Summary:
    """Summarise a runs table (:meth:`ResultStore.runs`)."""
    if runs.empty or "kind" not in runs:
        raise ValueError("no finished runs to summarise")
    if is_controller_evaluation(runs):
        raise ValueError(
            "these results are a controller evaluation, not an audit: summarise them with "
            "trainenv.audit.controllers.summarize_controllers (trainenv report does this)"
        )
    perturbed = runs[(runs["kind"] == "perturbed") & (runs["status"] == "ok")].copy()
    if perturbed.empty:
        raise ValueError(
            "no perturbed run to summarise: every unperturbed run collapsed before its onset"
        )
    perturbed["collapsed"] = perturbed["collapsed"].astype(float)
    perturbed = _in_report_order(perturbed)
    table, margins, profile = [], [], []
    for recipe, by_recipe in perturbed.groupby("recipe", sort=False):
        grids = {}
        for name, rows in by_recipe.groupby("intervention", sort=False):
            grid = _Grid.from_rows(str(name), rows)
            grids[name] = grid
            table += grid.table_rows(recipe, n_boot, confidence)
            margins.append(grid.margin_row(recipe, n_boot, confidence))
        profile += _profile_rows(str(recipe), list(grids.values()), n_boot, confidence)
    base = runs[runs["kind"] == "baseline"]
    baselines = base.groupby("recipe").agg(
        runs=("run_id", "size"), collapsed=("collapsed", lambda c: int(c.astype(bool).sum()))
    )
    return Summary(
        pd.DataFrame(table),
        pd.DataFrame(margins),
        pd.DataFrame(profile),
        baselines.reset_index(),
        confidence,
    )


def _in_report_order(perturbed: pd.DataFrame) -> pd.DataFrame:
    """Perturbed runs sorted by recipe, then dimension (as in DIMENSIONS), intervention,
    magnitude and seed: the order of every table and figure."""
    dimension = perturbed["dimension"].map(DIMENSIONS.index).rename("dimension_index")
    keys = ["recipe", "dimension_index", "intervention", "magnitude", "seed"]
    return perturbed.join(dimension).sort_values(keys).drop(columns="dimension_index")


@dataclass
class _Grid:
    """One recipe x intervention: per-seed outcomes on the magnitude grid."""

    name: str
    dimension: str
    log_scale: bool
    magnitudes: np.ndarray  # (M,)
    seeds: np.ndarray  # (S,)
    per_seed: dict[str, np.ndarray]  # metric -> (S, M), the seed's mean over onsets
    rows: pd.DataFrame

    @classmethod
    def from_rows(cls, name: str, rows: pd.DataFrame) -> _Grid:
        per_seed = {
            metric: rows.pivot_table(
                index="seed", columns="magnitude", values=metric, aggfunc="mean", dropna=False
            )
            for metric in ("collapsed", *METRICS)
        }
        collapsed = per_seed["collapsed"]
        return cls(
            name=name,
            dimension=str(rows["dimension"].iloc[0]),
            log_scale=bool(rows["log_scale"].iloc[0]),
            magnitudes=collapsed.columns.to_numpy(dtype=float),
            seeds=collapsed.index.to_numpy(),
            per_seed={k: v.to_numpy(dtype=float) for k, v in per_seed.items()},
            rows=rows,
        )

    def margin_at(self, seeds: np.ndarray) -> tuple[float, Censoring]:
        """The margin over the seeds at indices ``seeds`` (shape ``(S,)``), and its censoring."""
        rates = nanmean(self.per_seed["collapsed"][seeds], axis=0)
        return margin(self.magnitudes, rates, self.log_scale)

    def margins(self, draws: np.ndarray) -> np.ndarray:
        """The margin of each resample: ``draws`` ``(B, S)`` seed indices -> ``(B,)``."""
        rates = nanmean(self.per_seed["collapsed"][draws], axis=1)
        return np.array([margin(self.magnitudes, r, self.log_scale)[0] for r in rates])

    def position(self, value: float) -> float:
        return math.nan if math.isnan(value) else registry.get(self.name).position(value)

    def table_rows(self, recipe: str, n_boot: int, confidence: float) -> list[dict]:
        out = []
        for j, m in enumerate(self.magnitudes):
            at = self.rows[self.rows["magnitude"] == m]
            row = {
                "recipe": recipe,
                "intervention": self.name,
                "dimension": self.dimension,
                "magnitude": m,
                "n": len(at),
            }
            for metric in ("collapsed", *METRICS):
                values = self.per_seed[metric][:, j]
                key = "collapse_rate" if metric == "collapsed" else metric
                row[key] = float(nanmean(values, axis=0))
                row[f"{key}_lo"], row[f"{key}_hi"] = mean_ci(values, n_boot, confidence)
            row["recovery_time"] = float(np.median(at["recovery_time"]))
            out.append(row)
        return out

    def margin_row(self, recipe: str, n_boot: int, confidence: float) -> dict:
        value, censored = self.margin_at(np.arange(len(self.seeds)))
        lo, hi = bootstrap_ci(self.margins, len(self.seeds), n_boot, confidence)
        return {
            "recipe": recipe,
            "intervention": self.name,
            "dimension": self.dimension,
            "margin": value,
            "margin_lo": lo,
            "margin_hi": hi,
            "censored": censored,
            "position": self.position(value),
            "seeds": len(self.seeds),
            "grid": ", ".join(f"{m:g}" for m in self.magnitudes),
            "unit": registry.get(self.name).description,
        }


def _profile_rows(recipe: str, grids: list[_Grid], n_boot: int, confidence: float) -> list[dict]:
    """Per dimension, the weakest intervention's margin position (NaN if any is unknown)."""
    rows = []
    for dimension in DIMENSIONS:
        members = [g for g in grids if g.dimension == dimension]
        if not members:
            continue
        seeds = np.unique(np.concatenate([g.seeds for g in members]))
        aligned = [_align(g, seeds) for g in members]
        everyone = np.arange(len(seeds))
        points = [g.position(g.margin_at(everyone)[0]) for g in aligned]
        j = int(np.argmin(points))  # NaN propagates: argmin points at it

        def weakest(draws: np.ndarray, aligned: list[_Grid] = aligned) -> np.ndarray:
            positions = [[g.position(m) for m in g.margins(draws)] for g in aligned]
            return np.min(positions, axis=0)

        lo, hi = bootstrap_ci(weakest, len(seeds), n_boot, confidence)
        rows.append(
            {
                "recipe": recipe,
                "dimension": dimension,
                "position": points[j],
                "position_lo": lo,
                "position_hi": hi,
                "censored": aligned[j].margin_at(everyone)[1],
                "limiting": aligned[j].name,
            }
        )
    return rows


def _align(grid: _Grid, seeds: np.ndarray) -> _Grid:
    """``grid`` with rows for ``seeds`` (NaN for seeds it lacks), so resamples line up."""
    where = {s: i for i, s in enumerate(grid.seeds)}
    per_seed = {}
    for metric, values in grid.per_seed.items():
        aligned = np.full((len(seeds), values.shape[1]), np.nan)
        for i, s in enumerate(seeds):
            if s in where:
                aligned[i] = values[where[s]]
        per_seed[metric] = aligned
    return _Grid(
        grid.name, grid.dimension, grid.log_scale, grid.magnitudes, seeds, per_seed, grid.rows
    )


# -- text ------------------------------------------------------------------------------------
def _estimate(row: Any, key: str, fmt: str) -> str:
    """``value [lo, hi]`` of the column ``key`` of a summary row."""
    lo, hi = getattr(row, f"{key}_lo"), getattr(row, f"{key}_hi")
    return f"{format_number(getattr(row, key), fmt)} {format_interval(lo, hi, fmt)}"


def profile_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    headers = ["recipe", *DIMENSIONS]
    rows = []
    for recipe, by_recipe in summary.profile.groupby("recipe", sort=False):
        cells = {d: "not tested" for d in DIMENSIONS}
        for r in by_recipe.itertuples():
            cells[r.dimension] = (
                f"{_MARK[r.censored]}{format_number(r.position, '.2f')} "
                f"{format_interval(r.position_lo, r.position_hi, '.2f')} ({r.limiting})"
            )
        rows.append([str(recipe), *cells.values()])
    return headers, rows


def margin_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    level = f"{summary.confidence:.0%} CI"
    headers = [
        "recipe",
        "intervention",
        "dimension",
        "margin",
        level,
        "collapsed / runs by magnitude",
    ]
    rows = []
    for r in summary.margins.itertuples():
        at = summary.table[
            (summary.table["recipe"] == r.recipe)
            & (summary.table["intervention"] == r.intervention)
        ]
        rates = " ".join(
            f"{m:g}:{round(c * n):d}/{n}"
            for m, c, n in zip(at["magnitude"], at["collapse_rate"], at["n"])
            if not math.isnan(c)
        )
        rows.append(
            [
                str(r.recipe),
                r.intervention,
                r.dimension,
                f"{_MARK[r.censored]}{format_number(r.margin)}",
                format_interval(r.margin_lo, r.margin_hi),
                rates,
            ]
        )
    return headers, rows


def metric_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    headers = [
        "recipe",
        "intervention",
        "magnitude",
        "n",
        "collapse rate",
        "drawdown",
        "area",
        "final gap",
        "recovery (median steps)",
    ]
    rows = []
    for r in summary.table.itertuples():
        rows.append(
            [
                str(r.recipe),
                r.intervention,
                f"{r.magnitude:g}",
                str(r.n),
                _estimate(r, "collapse_rate", ".2f"),
                *(_estimate(r, m, ".3f") for m in METRICS),
                format_number(r.recovery_time),
            ]
        )
    return headers, rows


def format_summary(summary: Summary) -> str:
    """The terminal summary: stability profiles, then margins per intervention."""
    parts = [
        "Stability profile: margin per dimension as a position in the intervention's range "
        "(0 = low end, 1 = high end; higher = more stable; weakest intervention in brackets)",
        format_table(*profile_rows(summary), markdown=False),
        "",
        "Margins: largest magnitude at which fewer than half of the seeds collapse",
        format_table(*margin_rows(summary), markdown=False),
    ]
    for b in summary.baselines.itertuples():
        if b.collapsed:
            parts.append(
                f"note: {b.collapsed}/{b.runs} unperturbed runs of {b.recipe} "
                "collapsed on their own"
            )
    return "\n".join(parts)


# -- the report ------------------------------------------------------------------------------
def write_report(
    out: str | Path, n_boot: int = 1000, confidence: float = 0.95
) -> tuple[Path, Summary]:
    """Write ``report.md`` and ``figures/*.png`` under ``out`` from its stored results."""
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
        "`>=`: no tested magnitude made half of the seeds collapse; `<`: even the smallest did.",
        "",
        format_table(*profile_rows(summary), markdown=True),
        "",
        f"![stability profile]({rel['profile']})",
        "",
        "## Margins",
        "",
        "Largest magnitude at which fewer than half of the seeds collapse, interpolated on the "
        "grid (geometrically for log-scale interventions). A run collapses when the env's "
        "collapse rule fires or it is not back within the tolerance of its unperturbed fork by "
        "the end of the horizon.",
        "",
        format_table(*margin_rows(summary), markdown=True),
        "",
        f"![margin curves]({rel['margins']})",
        "",
        "## Trajectories",
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


# -- figures ---------------------------------------------------------------------------------
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
                f"{_MARK[r.censored]}{r.position:.2f}",
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
    fig, axes = _grid(plt, len(names))
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


def plot_trajectories(store: ResultStore, runs: pd.DataFrame, recipe: str, path: Path) -> None:
    """Per intervention, one seed and onset: the unperturbed branch and each perturbed one,
    with the perturbation window shaded."""
    plt = pyplot()
    runs = runs[runs["recipe"] == recipe]
    seed, onset = runs["seed"].min(), runs["onset"].min()
    pair = runs[(runs["seed"] == seed) & (runs["onset"] == onset)]
    steps = store.steps(pair["run_id"])
    base_id = pair.loc[pair["kind"] == "baseline", "run_id"]
    base = steps[steps["run_id"].isin(base_id)].sort_values("step")
    names = list(_in_report_order(pair[pair["kind"] == "perturbed"])["intervention"].unique())
    fig, axes = _grid(plt, len(names))
    cmap = plt.get_cmap("viridis")
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
            if isinstance(r.collapse_reason, str):
                ax.plot(x[-1], y[-1], "x", color="red", ms=8)
        ax.set_title(f"{name}, seed {seed}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("p", fontsize=8)
        ax.legend(fontsize=6, title="magnitude", title_fontsize=6)
    fig.suptitle(f"{recipe}: perturbed vs unperturbed (shaded: perturbation; x: collapse)")
    save_figure(fig, path)


def _grid(plt: Any, n: int) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])
