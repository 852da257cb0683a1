"""The reference band: where unperturbed runs' meta-states lie at each point of training.

Calibration runs ``S`` unperturbed reference runs and records the latent ``z[s, t]`` (shape
``(d,)``) of run ``s`` after its step ``t``, at ``u_t`` updates. The band at step ``t`` is a
Gaussian ``N(mu_t, Sigma_t)``::

    mu_t    = mean_s z[s, t]
    Sigma_t = covariance of the residuals z[s, t'] - mu_t' over all seeds s and the steps
              t' with |t' - t| <= radius, times S / (S - 1), plus min_std^2 * I

Only ``S`` seeds are seen at each step, too few for a ``d x d`` covariance (``S <= d`` makes it
singular), so the residuals of neighbouring steps are pooled (``S * (2 radius + 1)`` samples)
and the covariance is shrunk toward a scaled identity by the Ledoit-Wolf estimator. When the
pooled samples number fewer than ``2 d`` the covariance is diagonal (per-dimension variances)
instead. The floor ``min_std`` (in whitened latent units) keeps a step where every reference
run agrees from turning any small departure into a huge distance.

The deviation of a latent ``z`` at ``u`` updates is its Mahalanobis distance from the band at
the same training progress, ``sqrt((z - mu_t)^T Sigma_t^-1 (z - mu_t))`` with ``t`` the first
step whose update count is ``>= u`` (the last step beyond the band's end). Under the band a
latent's squared distance is chi-squared with ``d`` degrees of freedom (mean ``d``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PREFIX = "band_"  # key prefix of the band's arrays in an encoder's .npz


class ReferenceBand:
    """Per-step mean and whitening of reference latents; see the module docstring.

    Args:
        updates: Shape ``(T,)``, increasing: update count at each step of the band.
        mean: Shape ``(T, d)``: ``mu_t``.
        whiten: Shape ``(T, d, d)``: ``W_t`` with ``W_t^T W_t = Sigma_t^-1`` (the inverse of
            the Cholesky factor of ``Sigma_t``), so the distance is ``||W_t (z - mu_t)||``.
    """

    def __init__(self, updates: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> None:
        updates, mean, whiten = np.asarray(updates), np.asarray(mean), np.asarray(whiten)
        t, d = mean.shape if mean.ndim == 2 else (0, 0)
        if t < 1 or updates.shape != (t,) or whiten.shape != (t, d, d):
            raise ValueError(
                f"band arrays must have shapes updates (T,), mean (T, d), whiten (T, d, d) with "
                f"T >= 1; got {updates.shape}, {mean.shape}, {whiten.shape}"
            )
        if not (np.diff(updates) > 0).all():
            raise ValueError("band updates must be strictly increasing")
        self.updates = updates.astype(np.int64)
        self.mean = mean.astype(np.float64)
        self.whiten = whiten.astype(np.float64)

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    def __len__(self) -> int:
        return len(self.updates)

    @classmethod
    def from_covariance(
        cls, updates: np.ndarray, mean: np.ndarray, covariance: np.ndarray
    ) -> ReferenceBand:
        """A band from per-step means ``(T, d)`` and covariances ``(T, d, d)`` (positive
        definite)."""
        covariance = np.asarray(covariance, dtype=np.float64)
        try:
            chol = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError:
            raise ValueError("band covariances must be positive definite") from None
        eye = np.broadcast_to(np.eye(covariance.shape[-1]), covariance.shape)
        return cls(updates, mean, np.linalg.solve(chol, eye))

    @classmethod
    def fit(
        cls,
        runs: Sequence[tuple[np.ndarray, np.ndarray]],
        radius: int = 2,
        min_std: float = 0.1,
    ) -> ReferenceBand:
        """Fit on reference runs, each ``(latents (T_s, d), updates (T_s,))``.

        Runs share one update grid (the same updates per step); a run that ended early (it
        diverged) covers a prefix of it. Needs at least 2 runs: the band is their spread.
        """
        if len(runs) < 2:
            raise ValueError(f"a reference band needs >= 2 reference runs, got {len(runs)}")
        if radius < 0 or not min_std > 0:
            raise ValueError(f"need radius >= 0 and min_std > 0, got {radius}, {min_std}")
        grid = max((np.asarray(u) for _, u in runs), key=len)
        for latents, updates in runs:
            if len(updates) != len(latents) or not np.array_equal(updates, grid[: len(updates)]):
                raise ValueError("reference runs must share one update grid (same k per step)")
        stacked = np.full((len(runs), len(grid), np.shape(runs[0][0])[1]), np.nan)
        for s, (latents, _) in enumerate(runs):
            stacked[s, : len(latents)] = latents
        seeds = (~np.isnan(stacked[:, :, 0])).sum(axis=0)  # runs present at each step, (T,)
        mean = np.nanmean(stacked, axis=0)
        # Residuals around each step's mean, scaled so their variance is unbiased (ddof = 1).
        residuals = (stacked - mean) * np.sqrt(seeds / np.maximum(seeds - 1, 1))[None, :, None]
        covariance = np.stack(
            [_covariance(residuals, t, radius, min_std) for t in range(len(grid))]
        )
        return cls.from_covariance(grid, mean, covariance)

    def index(self, updates: int) -> int:
        """The band step at ``updates`` updates: the first with at least as many."""
        return min(int(np.searchsorted(self.updates, updates)), len(self.updates) - 1)

    def distance(self, latent: np.ndarray, updates: int) -> float:
        """Mahalanobis distance of ``latent`` ``(d,)`` from the band at ``updates`` updates."""
        t = self.index(updates)
        return float(np.linalg.norm(self.whiten[t] @ (latent - self.mean[t])))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The band as named arrays (keys prefixed ``band_``), for an ``.npz``."""
        return {f"{PREFIX}updates": self.updates, f"{PREFIX}mean": self.mean,
                f"{PREFIX}whiten": self.whiten}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ReferenceBand | None:
        """The band stored in ``arrays`` (an ``.npz``), or ``None`` if it holds none."""
        if f"{PREFIX}mean" not in arrays:
            return None
        return cls(*(arrays[f"{PREFIX}{key}"] for key in ("updates", "mean", "whiten")))


def _covariance(residuals: np.ndarray, t: int, radius: int, min_std: float) -> np.ndarray:
    """``Sigma_t`` from the pooled residuals of steps ``t - radius .. t + radius``."""
    from sklearn.covariance import LedoitWolf

    pooled = residuals[:, max(0, t - radius) : t + radius + 1].reshape(-1, residuals.shape[2])
    pooled = pooled[~np.isnan(pooled[:, 0])]
    d = residuals.shape[2]
    if len(pooled) >= 2 * d:
        covariance = LedoitWolf(assume_centered=True).fit(pooled).covariance_
    else:
        covariance = np.diag(np.mean(pooled**2, axis=0))
    return covariance + min_std**2 * np.eye(d)
