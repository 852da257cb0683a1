"""The findings' figures: one panel per paradigm in each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainenv.audit.formatting import format_interval as _ci
from trainenv.audit.formatting import format_number as _num
from trainenv.audit.formatting import pyplot, save_figure
from trainenv.findings.claims import Decoupling, EarlyWarning
from trainenv.findings.dose import Stochasticity

__all__ = ["plot_buffering", "plot_decoupling", "plot_detectors", "plot_example"]


def plot_decoupling(results: dict[str, Decoupling], path: Path) -> None:
    """Per paradigm: recipes' mean final performance against mean stability."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes.flat, results.items()):
        ax.scatter(r.recipes["final_p"], r.recipes["stability"], color="tab:blue")
        for row in r.recipes.itertuples():
            label = row.recipe.split(" ", 1)[1]
            ax.annotate(label, (row.final_p, row.stability), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("final performance p (mean over seeds)")
        ax.set_ylabel("stability (1 - mean relative drawdown)")
        ax.set_title(f"{name}: rho = {_num(r.rho, '.2f')} {_ci(r.lo, r.hi, '.2f')}", fontsize=9)
    save_figure(fig, path)


def plot_buffering(results: dict[str, Stochasticity], path: Path) -> None:
    """Per paradigm: each knob's mean paired drawdown difference (with minus without) at each
    level, with its CI; the level's rank on the x axis (0: off)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.2), squeeze=False)
    for ax, (name, result) in zip(axes.flat, results.items()):
        for offset, dose in enumerate(result.knobs):
            x = np.arange(len(dose.levels) + 1) + 0.08 * offset
            mean = np.array([0.0, *(e.drawdown["mean"] for e in dose.effects)])
            lo = np.array([0.0, *(e.drawdown["mean_lo"] for e in dose.effects)])
            hi = np.array([0.0, *(e.drawdown["mean_hi"] for e in dose.effects)])
            err = np.nan_to_num(np.abs(np.vstack([mean - lo, hi - mean])))
            levels = ", ".join(f"{v:g}" for v in dose.levels)
            trend = f"{_num(dose.slope, '+.3f')} {_ci(dose.slope_lo, dose.slope_hi, '+.3f')}"
            label = f"{dose.knob} ({levels}): trend {trend}"
            ax.errorbar(x, mean, yerr=err, fmt="o-", capsize=2, label=label)
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("level rank (0: off)")
        ax.set_ylabel("drawdown, with minus without (p)")
        ax.set_title(f"{name}: {result.verdict}", fontsize=9)
        ax.legend(fontsize=6)
    save_figure(fig, path)


def plot_detectors(results: dict[str, EarlyWarning], path: Path) -> None:
    """Per paradigm: each detector's AUROC and detection rate with their CIs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.4), squeeze=False)
    for ax, (name, w) in zip(axes.flat, results.items()):
        t = w.table
        y = np.arange(len(t))
        for offset, key, color in ((-0.15, "auroc", "tab:blue"),
                                   (0.15, "detection_rate", "tab:orange")):  # fmt: skip
            err = np.abs(np.vstack([t[key] - t[f"{key}_lo"], t[f"{key}_hi"] - t[key]]))
            ax.errorbar(t[key], y + offset, xerr=np.nan_to_num(err), fmt="o", color=color,
                        label=key.replace("_", " "), capsize=2)  # fmt: skip
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_yticks(y, t["detector"], fontsize=7)
        ax.set_xlim(0, 1.02)
        ax.set_title(f"{name} (H = {w.horizon} steps)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def plot_example(results: dict[str, EarlyWarning], path: Path) -> None:
    """Per paradigm: a collapsing run's p and leak-free meta-state deviation, with the
    threshold."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.4), squeeze=False)
    for ax, (name, w) in zip(axes.flat, results.items()):
        collapsed = [t for t in w.traces if t.collapse_onset is not None]
        if not collapsed:
            ax.set_title(f"{name}: no run collapsed", fontsize=9)
            continue
        trace = collapsed[0]
        steps = np.arange(1, len(trace.p) + 1)
        ax.plot(steps, trace.p, color="tab:blue", label="p")
        ax.set_ylabel("p", color="tab:blue")
        ax.set_xlabel("step")
        ax.axvline(trace.collapse_onset, color="black", ls=":", label="collapse onset")
        if trace.ramp_onset is not None:
            ax.axvspan(trace.ramp_onset, steps[-1], color="tab:red", alpha=0.08, label="ramp")
        twin = ax.twinx()
        twin.plot(steps, trace.inputs["deviation"], color="tab:orange")
        twin.axhline(w.primary["threshold"], color="tab:orange", ls="--", lw=0.8)
        twin.set_yscale("log")
        twin.set_ylabel("leak-free meta-state deviation (dashed: threshold)", color="tab:orange")
        ax.set_title(f"{name}: seed {trace.seed}, {trace.scenario}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)
