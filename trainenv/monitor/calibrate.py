"""Live calibration: fitting the monitor's encoder and thresholds on the user's own run.

Two paths, both with the functions trainenv's own calibration uses (window features, scaler +
whitened PCA, :class:`~trainenv.core.band.ReferenceBand`, score quantiles):

- **from the first N updates** of the monitored run (``StabilityMonitor(calibration_updates=N)``,
  the default): the encoder is fitted on the window features of those updates and every
  threshold is the score quantile over them. No alarm is raised during them.
- **from short reference runs** the user provides (``monitor.calibrate(runs)``: each a list of
  telemetry rows of an unperturbed run of the same recipe): the encoder is fitted on all of
  them, with a reference band per update when there are two or more (so ``meta-state
  deviation`` becomes available), and the thresholds are quantiles over all their updates.

Limits (why the thresholds are only as good as the calibration material):

- The first N updates are the run's *early* phase: a loss falling fast, gradients larger than
  later. A detector calibrated there is tuned to that phase; a run whose later phase is
  noisier than its start (a learning-rate warmup ending, a curriculum step) alarms more often
  than ``false_alarm_rate``. Calibrate after the warmup, or from reference runs.
- A problem already under way in the first N updates is taken as normal.
- One run has no spread across seeds, so the live path has no reference band and no
  ``meta-state deviation``: only the self-referenced deviation (the latent's distance from the
  run's own recent history).
- The band of reference runs is indexed by update count: it fits a monitored run of the same
  recipe (schedule, batch size, logging cadence), not a different one.
- The false-alarm rate holds on runs like the calibration material; a run of another recipe,
  model size or dataset needs its own calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trainenv.core.band import ReferenceBand
from trainenv.core.metastate import MetaStateEncoder, window_features

MAX_COMPONENTS = 4  # few updates support few directions: keep the live latent small


def run_features(table: np.ndarray, window: int) -> np.ndarray:
    """Window features after every update of one run.

    Args:
        table: Shape ``(T, C)``: the run's telemetry, one row per update.
        window: Rows per window (the first windows are shorter).

    Returns:
        Shape ``(T, 3 * C)``.
    """
    return np.stack([window_features(table[max(0, t + 1 - window) : t + 1])
                     for t in range(len(table))])  # fmt: skip


def fit_live_encoder(channels: Sequence[str], table: np.ndarray, window: int) -> MetaStateEncoder:
    """An encoder fitted on the first updates of the monitored run, ``table`` ``(N, C)``."""
    encoder = MetaStateEncoder(channels, window=window, max_components=MAX_COMPONENTS)
    return encoder.fit(run_features(table, window))


def reference_encoder(
    channels: Sequence[str], runs: Sequence[np.ndarray], window: int, radius: int = 2
) -> MetaStateEncoder:
    """An encoder fitted on reference runs (each ``(T_s, C)``), with a per-update reference
    band when there are >= 2 runs (``radius``: neighbouring updates pooled per covariance)."""
    features = [run_features(run, window) for run in runs]
    encoder = MetaStateEncoder(channels, window=window, max_components=MAX_COMPONENTS)
    encoder.fit(np.concatenate(features))
    if len(runs) >= 2:
        latents = [(encoder.transform(f), np.arange(1, len(f) + 1)) for f in features]
        encoder.band_ = ReferenceBand.fit(latents, radius=radius)
    return encoder


def detector_inputs(
    table: np.ndarray,
    encoder: MetaStateEncoder | None,
    channels: Sequence[str],
    loss_channel: str | None,
) -> dict[str, Any]:
    """Each detector input over one run, ``table`` ``(T, C)``: ``loss`` and ``grad_norm``
    ``(T,)``, ``latents`` ``(T, d)`` and ``deviation`` ``(T,)`` (the band's distance at update
    ``t + 1``; ``None`` entries without a band), as the monitor computes them live."""
    inputs: dict[str, Any] = {}
    if loss_channel is not None:
        inputs["loss"] = table[:, list(channels).index(loss_channel)]
    if "grad_norm" in channels:
        inputs["grad_norm"] = table[:, list(channels).index("grad_norm")]
    if encoder is not None:
        columns = [list(channels).index(c) for c in encoder.channels]
        latents = encoder.transform(run_features(table[:, columns], encoder.window))
        inputs["latents"] = latents
        band = encoder.band_
        inputs["deviation"] = [band.distance(z, t + 1) if band else None
                               for t, z in enumerate(latents)]  # fmt: skip
    return inputs


def held_out_deviation(
    encoder: MetaStateEncoder, tables: Sequence[np.ndarray], columns: Sequence[int]
) -> list[list[float]]:
    """Per reference run, its deviation from a band fitted on the *other* runs (>= 3 runs).

    A run's distance from a band fitted on itself understates how far a new run of the same
    recipe lies, so thresholds are set on held-out distances, as the early-warning evaluation
    cross-fits by seed.
    """
    if len(tables) < 3:
        raise ValueError(f"held-out deviations need >= 3 reference runs, got {len(tables)}")
    latents = [encoder.transform(run_features(t[:, columns], encoder.window)) for t in tables]
    steps = [np.arange(1, len(z) + 1) for z in latents]
    held_out = []
    for i, z in enumerate(latents):
        others = [(latents[j], steps[j]) for j in range(len(latents)) if j != i]
        band = ReferenceBand.fit(others)
        held_out.append([band.distance(v, t + 1) for t, v in enumerate(z)])
    return held_out
