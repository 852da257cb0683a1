"""Fitting the meta-state encoder and its reference band on unperturbed reference runs.

``trainenv calibrate ENV_ID [--seeds N]`` refits the
encoder shipped for a registered environment; :func:`calibrate` does the same for a user's own
``TrainEnv``. The encoder carries the reference band of the latent trajectory
(:class:`~trainenv.core.band.ReferenceBand`), from which the env computes ``info["deviation"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from trainenv.core.band import ReferenceBand
from trainenv.core.metastate import MetaStateEncoder, feature_columns, window_features
from trainenv.env import TrainEnv
from trainenv.envs import encoder_path

__all__ = [
    "calibrate",
    "encoder_path",
    "fit_encoder",
    "reference_features",
    "reference_runs",
    "write_encoder",
]

REFERENCE_SEED_BASE = 1_000_000  # reference runs use seeds no audit or test uses by default


def reference_runs(env: TrainEnv, seeds: int, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per unperturbed run: window features after every step, shape ``(T, 3 * C)``, and the
    update count at each step, shape ``(T,)`` (``T = max_steps`` unless the run diverged)."""
    trainer, runs = env.trainer, []
    for i in range(seeds):
        trainer.reset(REFERENCE_SEED_BASE + i)
        rows = np.zeros((0, len(trainer.channels)))
        features, updates = [], []
        for _ in range(env.max_steps):
            telemetry = trainer.advance(env.k)
            rows = np.concatenate([rows, telemetry.values])[-window:]
            features.append(window_features(rows))
            updates.append(trainer.updates)
            if telemetry.diverged:
                break
        runs.append((np.asarray(features), np.asarray(updates)))
    return runs


def reference_features(env: TrainEnv, seeds: int, window: int) -> np.ndarray:
    """Window features after every step of ``seeds`` unperturbed runs, shape ``(n, 3 * C)``."""
    return np.concatenate([features for features, _ in reference_runs(env, seeds, window)])


def calibrate(
    env: TrainEnv | str,
    seeds: int = 8,
    window: int = 16,
    radius: int = 2,
    **encoder_kwargs: float,
) -> MetaStateEncoder:
    """Fit a meta-state encoder and its reference band for ``env`` (a ``TrainEnv`` or a
    registered id).

    Runs ``seeds`` unperturbed episodes of the env's trainer, ``k`` updates per step for
    ``max_steps`` steps, fits scaler + PCA on the telemetry-window features, then the band of
    the runs' latents per step (``radius``: neighbouring steps pooled into each step's
    covariance; see :class:`~trainenv.core.band.ReferenceBand`). With one seed there is no
    spread to measure: the encoder has no band (``band_`` is ``None``).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if isinstance(env, str):
        env = gym.make(env, observation="telemetry").unwrapped  # type: ignore[assignment]
    assert isinstance(env, TrainEnv)
    channels = list(env.trainer.channel_names)
    runs = reference_runs(env, seeds, window)
    return fit_encoder(runs, channels, None, window=window, radius=radius, **encoder_kwargs)


def fit_encoder(
    runs: Sequence[tuple[np.ndarray, np.ndarray]],
    channels: Sequence[str],
    subset: Sequence[str] | None = None,
    *,
    window: int = 16,
    radius: int = 2,
    **encoder_kwargs: float,
) -> MetaStateEncoder:
    """Fit a meta-state encoder, and its band if there are >= 2 runs, on reference runs.

    Args:
        runs: Per unperturbed run, window features over ``channels`` after every step, shape
            ``(T, 3 * len(channels))``, and the update count at each step, ``(T,)`` (as
            :func:`reference_runs` returns them).
        channels: The channels the features cover, in order.
        subset: The channels the encoder summarises (default: all); e.g. the dynamics channels
            of a leak-free meta-state (:func:`~trainenv.core.telemetry.dynamics_channels`).
            Its ``channels`` are these, so it encodes windows of these channels only.
        window: The telemetry rows per window the features were computed over.
        radius: Neighbouring steps pooled into each step's band covariance.
    """
    subset = tuple(channels) if subset is None else tuple(subset)
    columns = feature_columns(channels, subset)
    runs = [(np.asarray(features)[:, columns], updates) for features, updates in runs]
    encoder = MetaStateEncoder(subset, window=window, **encoder_kwargs)  # type: ignore[arg-type]
    encoder.fit(np.concatenate([features for features, _ in runs]))
    if len(runs) >= 2:
        latents = [(encoder.transform(features), updates) for features, updates in runs]
        encoder.band_ = ReferenceBand.fit(latents, radius=radius)
    return encoder


def write_encoder(
    env_id: str, seeds: int = 8, window: int = 16, radius: int = 2, out: Path | None = None
) -> tuple[MetaStateEncoder, Path]:
    """Calibrate a registered environment and save its encoder with its band, by default
    where the env loads it (:func:`encoder_path`). Returns the encoder and the path."""
    import trainenv  # noqa: F401  (registers the environments)

    if env_id not in gym.registry:
        known = sorted(i for i in gym.registry if i.startswith("trainenv/"))
        raise ValueError(f"env_id: unknown environment {env_id!r}; known: {known}")
    encoder = calibrate(env_id, seeds=seeds, window=window, radius=radius)
    out = out or encoder_path(env_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder.save(out)
    return encoder, out
