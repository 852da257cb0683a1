"""The meta-state: a low-dimensional latent summary of a window of telemetry.

Each window of ``W`` telemetry rows becomes a feature vector (per channel: the last value, the
window mean and the window standard deviation, all in symlog units), which a scikit-learn
``StandardScaler`` + whitened ``PCA`` fitted on unperturbed reference runs projects to a few
latent dimensions. Latents are squashed smoothly into ``[-bound, bound]`` so observation bounds
stay finite however far a perturbed run departs from the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from trainenv.core.band import ReferenceBand

FEATURES_PER_CHANNEL = 3  # last, mean, std of the window
_LARGE = 50.0  # symlog value standing in for +-inf / nan (symlog(1e21) ~ 48)


def symlog(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)``, with non-finite values mapped to finite extremes."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.sign(x) * np.log1p(np.abs(x))
    if np.isfinite(y).all():  # the usual case: nan_to_num's general path costs ~3x this check
        return y
    return np.nan_to_num(y, nan=_LARGE, posinf=_LARGE, neginf=-_LARGE)


def squash(x: np.ndarray, bound: float) -> np.ndarray:
    """Smoothly map the real line into ``(-bound, bound)``: ``bound * tanh(x / bound)``."""
    return bound * np.tanh(x / bound)


def window_features(rows: np.ndarray) -> np.ndarray:
    """Features of one telemetry window.

    Args:
        rows: Shape ``(W, C)``, oldest first; ``W >= 1``.

    Returns:
        Shape ``(3 * C,)``: symlog last value, window mean and window std per channel.
    """
    z = symlog(rows)
    return np.concatenate([z[-1], z.mean(axis=0), z.std(axis=0)])


def feature_columns(channels: Sequence[str], subset: Sequence[str]) -> np.ndarray:
    """Columns of :func:`window_features` over ``channels`` that belong to ``subset`` (e.g. the
    dynamics channels of a leak-free meta-state), in :func:`window_features`' layout: the
    result applied to features over ``channels`` gives the features over ``subset``.

    Returns:
        Integer indices, shape ``(3 * len(subset),)``.
    """
    position = {name: i for i, name in enumerate(channels)}
    missing = [name for name in subset if name not in position]
    if missing or not subset:
        raise ValueError(f"subset must be non-empty channels of {tuple(channels)}, got {subset}")
    index = np.array([position[name] for name in subset])
    return np.concatenate([block * len(channels) + index for block in range(FEATURES_PER_CHANNEL)])


class MetaStateEncoder:
    """Scaler + PCA over telemetry-window features, in the manner of a scikit-learn estimator.

    Args:
        channels: Telemetry channel names, in the trainer's column order.
        window: Telemetry rows (updates) per window.
        variance: Keep the fewest principal components explaining this share of variance...
        max_components: ...but no more than this many.
        bound: Latents are squashed into ``(-bound, bound)``.
    """

    def __init__(
        self,
        channels: Sequence[str],
        window: int = 16,
        variance: float = 0.95,
        max_components: int = 6,
        bound: float = 10.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0 < variance <= 1:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        if max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.channels = tuple(channels)
        self.window, self.variance = int(window), float(variance)
        self.max_components, self.bound = int(max_components), float(bound)
        self.weights_: np.ndarray | None = None
        self.offset_: np.ndarray | None = None
        self.explained_variance_ratio_: np.ndarray | None = None
        # Where reference runs' latents lie per training step (set by calibration; optional).
        self.band_: ReferenceBand | None = None

    @property
    def n_components(self) -> int:
        return len(self._fitted()[1])

    def fit(self, features: np.ndarray) -> MetaStateEncoder:
        """Fit on window features of unperturbed reference runs, shape ``(n, 3 * C)``."""
        features = np.asarray(features, dtype=np.float64)
        expected = FEATURES_PER_CHANNEL * len(self.channels)
        if features.ndim != 2 or features.shape[1] != expected or len(features) < 2:
            raise ValueError(f"features must have shape (n >= 2, {expected}), got {features.shape}")
        pipeline = self.pipeline(features)
        scaler, pca = pipeline.named_steps["standardscaler"], pipeline.named_steps["pca"]
        n = min(self.max_components, pca.n_components_)
        # The fused affine form of scaler + whitened PCA: one small matmul per step in env.step,
        # instead of scikit-learn's per-call input validation (~100 us, more than an MLP update).
        components = pca.components_[:n] / np.sqrt(pca.explained_variance_[:n, None])
        self.weights_ = (components / scaler.scale_).T
        self.offset_ = -(scaler.mean_ / scaler.scale_ + pca.mean_) @ components.T
        self.explained_variance_ratio_ = pca.explained_variance_ratio_[:n]
        return self

    def pipeline(self, features: np.ndarray) -> Pipeline:
        """The fitted scikit-learn pipeline this encoder is the fused form of."""
        return make_pipeline(
            StandardScaler(),
            PCA(
                n_components=self.variance if self.variance < 1 else None,
                whiten=True,
                svd_solver="full",
            ),
        ).fit(features)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Latents of features ``(..., 3 * C)`` → ``(..., n_components)``, squashed."""
        weights, offset = self._fitted()
        return squash(np.asarray(features) @ weights + offset, self.bound)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """Latent of one telemetry window ``(W', C)``; the last ``window`` rows are used."""
        return self.transform(window_features(rows[-self.window :]))

    def save(self, path: str | Path) -> None:
        """Save as plain arrays (``.npz``), never pickle."""
        weights, offset = self._fitted()
        arrays: dict[str, Any] = dict(
            channels=np.array(self.channels), window=self.window, variance=self.variance,
            max_components=self.max_components, bound=self.bound, weights=weights,
            offset=offset, explained_variance_ratio=self.explained_variance_ratio_,
            **(self.band_.to_arrays() if self.band_ is not None else {}),
        )  # fmt: skip
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> MetaStateEncoder:
        with np.load(path, allow_pickle=False) as data:
            encoder = cls(
                [str(c) for c in data["channels"]], int(data["window"]), float(data["variance"]),
                int(data["max_components"]), float(data["bound"]),
            )  # fmt: skip
            encoder.weights_, encoder.offset_ = data["weights"], data["offset"]
            encoder.explained_variance_ratio_ = data["explained_variance_ratio"]
            encoder.band_ = ReferenceBand.from_arrays(data)  # None in files saved without one
        return encoder

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.weights_ is None or self.offset_ is None:
            raise RuntimeError("MetaStateEncoder is not fitted: call fit() or load()")
        return self.weights_, self.offset_
