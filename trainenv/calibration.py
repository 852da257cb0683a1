"""Fitting the meta-state encoder on unperturbed reference runs.

``python -m trainenv.calibration ENV_ID [--seeds N]`` refits the encoder shipped for a
registered environment; :func:`calibrate` does the same for a user's own ``TrainEnv``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from trainenv.core.metastate import MetaStateEncoder, window_features
from trainenv.env import TrainEnv

ENCODER_DIR = Path(__file__).parent / "data" / "encoders"
REFERENCE_SEED_BASE = 1_000_000  # reference runs use seeds no audit or test uses by default


def encoder_path(env_id: str) -> Path:
    """Where the shipped encoder of a registered environment lives."""
    return ENCODER_DIR / f"{env_id.split('/')[-1]}.npz"


def reference_features(env: TrainEnv, seeds: int, window: int) -> np.ndarray:
    """Window features after every step of ``seeds`` unperturbed runs, shape ``(n, 3 * C)``."""
    trainer, features = env.trainer, []
    for i in range(seeds):
        trainer.reset(REFERENCE_SEED_BASE + i)
        rows = np.zeros((0, len(trainer.channels)))
        for _ in range(env.max_steps):
            telemetry = trainer.advance(env.k)
            rows = np.concatenate([rows, telemetry.values])[-window:]
            features.append(window_features(rows))
            if telemetry.diverged:
                break
    return np.asarray(features)


def calibrate(
    env: TrainEnv | str, seeds: int = 4, window: int = 16, **encoder_kwargs: float
) -> MetaStateEncoder:
    """Fit a meta-state encoder for ``env`` (a ``TrainEnv`` or a registered id).

    Runs ``seeds`` unperturbed episodes of the env's trainer, ``k`` updates per step for
    ``max_steps`` steps, and fits scaler + PCA on the telemetry-window features.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if isinstance(env, str):
        env = gym.make(env, observation="telemetry").unwrapped  # type: ignore[assignment]
    assert isinstance(env, TrainEnv)
    channels = [c.name for c in env.trainer.channels]
    encoder = MetaStateEncoder(channels, window=window, **encoder_kwargs)  # type: ignore[arg-type]
    return encoder.fit(reference_features(env, seeds, window))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_id", help="registered environment id, e.g. trainenv/Digits-MLP-v0")
    parser.add_argument("--seeds", type=int, default=4, help="reference runs (default 4)")
    parser.add_argument("--window", type=int, default=16, help="updates per window (default 16)")
    parser.add_argument("--out", type=Path, help="output .npz (default: the shipped location)")
    args = parser.parse_args(argv)
    import trainenv  # noqa: F401  (registers the environments)

    encoder = calibrate(args.env_id, seeds=args.seeds, window=args.window)
    out = args.out or encoder_path(args.env_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder.save(out)
    ratios = np.round(encoder.explained_variance_ratio_, 3).tolist()  # type: ignore[union-attr]
    print(f"{args.env_id}: {encoder.n_components} components, explained variance {ratios} -> {out}")


if __name__ == "__main__":
    main()
