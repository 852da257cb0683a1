"""The meta-states claim 3 compares, fitted on calibration runs' recorded window features.

Two encoders, each scaler + whitened PCA with a reference band, fitted the way ``trainenv
calibrate`` fits an environment's encoder (:func:`~trainenv.calibration.fit_encoder`) and on
the same unperturbed calibration runs, so that they differ in one thing only, the channels
they summarise:

- **full**: every telemetry channel, as the environment's shipped encoder;
- **leak-free**: the *dynamics* channels only (:func:`~trainenv.core.telemetry.dynamics_channels`):
  no performance channel (validation accuracy or loss, episode return), which the collapse
  rule is defined on, and no knob channel (the learning rate in force), which a perturbation
  sets directly. A detector reading either would "precede collapse" trivially.

:func:`with_meta_states` adds to each trace, per encoder, the latent and its band deviation
at every step (what ``info["deviation"]`` would report with that encoder: ``latents`` and
``deviation`` for the leak-free one, ``latents_full`` and ``deviation_full`` for the full
one), and the leak-free window features themselves (the input of the learned baseline,
:class:`~trainenv.warning.learned.LogisticBaseline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from trainenv.calibration import fit_encoder
from trainenv.core.metastate import MetaStateEncoder, feature_columns
from trainenv.warning.simulation import CALIBRATION, Trace

__all__ = ["FULL", "LEAK_FREE", "fit_meta_states", "leak_free_channels", "with_meta_states"]

FULL, LEAK_FREE = "full", "leak-free"
# Input keys: the leak-free meta-state, the one claim 3 is about, takes the plain names that
# the detectors of trainenv.warning.DETECTORS read (deviation, latents); the full one's end _full.
_SUFFIX = {FULL: "_full", LEAK_FREE: ""}


def leak_free_channels(trace: Trace) -> tuple[str, ...]:
    """The channels of ``trace`` whose declared role is ``"dynamics"``."""
    return tuple(c for c, role in zip(trace.channels, trace.roles) if role == "dynamics")


def fit_meta_states(
    calibration: Sequence[Trace], window: int = 16, radius: int = 2
) -> dict[str, MetaStateEncoder]:
    """The full and leak-free encoders (keys :data:`FULL`, :data:`LEAK_FREE`), each with its
    band, fitted on the ``features`` and ``updates`` of unperturbed ``calibration`` traces of
    one recipe (>= 2). ``window``: the telemetry rows the features were computed over (the
    env encoder's, 16 for every registered env)."""
    if len(calibration) < 2 or any(not t.reference for t in calibration):
        raise ValueError(f"calibration: need >= 2 unperturbed traces, got {len(calibration)}")
    channels = calibration[0].channels
    if not channels or any(t.channels != channels for t in calibration):
        raise ValueError("calibration traces must record the features of one set of channels")
    runs = [(t.inputs["features"], t.inputs["updates"].astype(np.int64)) for t in calibration]
    subsets = {FULL: channels, LEAK_FREE: leak_free_channels(calibration[0])}
    return {
        name: fit_encoder(runs, channels, subset, window=window, radius=radius)
        for name, subset in subsets.items()
    }


def with_meta_states(traces: Sequence[Trace], encoders: dict[str, MetaStateEncoder]) -> list[Trace]:
    """Copies of the (non-calibration) ``traces`` with, per encoder, inputs ``latents`` and
    ``deviation`` (leak-free) or ``latents_full`` and ``deviation_full`` (full), ``(T, d)``
    and ``(T,)``, and ``features_leak_free``, the window features the leak-free encoder reads,
    ``(T, 3 C_dynamics)``."""
    out = []
    for trace in traces:
        if trace.scenario == CALIBRATION:
            continue
        features, updates = trace.inputs["features"], trace.inputs["updates"]
        added: dict[str, np.ndarray] = {}
        for name, encoder in encoders.items():
            if encoder.band_ is None:
                raise ValueError(f"the {name} encoder has no band: fit it on >= 2 runs")
            own = features[:, feature_columns(trace.channels, encoder.channels)]
            latents = encoder.transform(own)
            added[f"latents{_SUFFIX[name]}"] = latents
            added[f"deviation{_SUFFIX[name]}"] = np.array(
                [encoder.band_.distance(z, int(u)) for z, u in zip(latents, updates)]
            )
            if name == LEAK_FREE:
                added["features_leak_free"] = own
        out.append(dataclasses.replace(trace, inputs={**trace.inputs, **added}))
    return out
