"""Summaries of an audit and the terminal table (the report: :mod:`trainenv.audit.report`).

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
from typing import Any

import numpy as np
import pandas as pd

from trainenv.audit.controllers import is_controller_evaluation
from trainenv.audit.formatting import (
    format_interval,
    format_number,
    format_table,
)
from trainenv.audit.metrics import (
    Censoring,
    bootstrap_ci,
    is_monotone,
    margin,
    mean_ci,
    nanmean,
)
from trainenv.core import interventions as registry
from trainenv.core.interventions import Dimension

DIMENSIONS = tuple(d.value for d in Dimension)
METRICS = ("drawdown", "area", "final_gap")  # averaged with a CI; recovery time: median
CENSORING_MARK = {"none": "", "above": ">=", "below": "<"}
NON_MONOTONE = "(non-monotone)"  # after the collapse counts of a curve that falls somewhere
MARGIN_DEFINITION = (
    "The margin is the magnitude where the collapse rate first reaches one half, interpolated "
    "on the grid (geometrically for log-scale interventions), so never above a magnitude that "
    "already collapsed half of the seeds."
)
CENSORING_LEGEND = (
    ">=: no tested magnitude made half of the seeds collapse; <: even the smallest did."
)
NON_MONOTONE_LEGEND = (
    f"{NON_MONOTONE}: the collapse rate falls at a larger magnitude; the margin still stops "
    "where it first reached one half."
)


@dataclass
class Summary:
    """An audit's results in tables (pandas), one row per...

    Attributes:
        table: ...recipe x intervention x magnitude: ``n`` pairs, ``collapse_rate`` and the
            mean ``drawdown``/``area``/``final_gap`` with ``*_lo``/``*_hi`` CIs, median
            ``recovery_time`` (steps; inf when most runs never recover).
        margins: ...recipe x intervention: ``margin`` (magnitude), CI, ``censored``
            (see :data:`~trainenv.audit.metrics.Censoring`), ``position`` in the range,
            ``monotone`` (the collapse rate never falls as the magnitude grows).
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
    perturbed = in_report_order(perturbed)
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


def in_report_order(perturbed: pd.DataFrame) -> pd.DataFrame:
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

    def rates_at(self, seeds: np.ndarray) -> np.ndarray:
        """The collapse rate per magnitude (shape ``(M,)``) over the seeds at indices ``seeds``."""
        return nanmean(self.per_seed["collapsed"][seeds], axis=0)

    def margin_at(self, seeds: np.ndarray) -> tuple[float, Censoring]:
        """The margin over the seeds at indices ``seeds`` (shape ``(S,)``), and its censoring."""
        return margin(self.magnitudes, self.rates_at(seeds), self.log_scale)

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
            "monotone": is_monotone(self.rates_at(np.arange(len(self.seeds)))),
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
                f"{CENSORING_MARK[r.censored]}{format_number(r.position, '.2f')} "
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
        ) + ("" if r.monotone else f" {NON_MONOTONE}")
        rows.append(
            [
                str(r.recipe),
                r.intervention,
                r.dimension,
                f"{CENSORING_MARK[r.censored]}{format_number(r.margin)}",
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
        "(0 = low end, 1 = high end; higher = more stable; weakest intervention in brackets). "
        + CENSORING_LEGEND,
        format_table(*profile_rows(summary), markdown=False),
        "",
        f"Margins per intervention. {MARGIN_DEFINITION}",
        format_table(*margin_rows(summary), markdown=False),
    ]
    if not summary.margins["monotone"].all():
        parts.append(NON_MONOTONE_LEGEND)
    for b in summary.baselines.itertuples():
        if b.collapsed:
            parts.append(
                f"note: {b.collapsed}/{b.runs} unperturbed runs of {b.recipe} "
                "collapsed on their own"
            )
    return "\n".join(parts)
