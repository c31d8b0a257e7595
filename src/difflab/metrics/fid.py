"""Fréchet distance between two sets of features (FID: Heusel et al. 2017, "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6).

Each set is summarised by a Gaussian N(mu, Sigma) fitted to its features, and

    d^2 = |mu_1 - mu_2|^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2)).

The matrix square root is scipy.linalg.sqrtm, with the standard implementation's (pytorch-fid,
TTUR) handling of numerical trouble: when the product is singular enough for sqrtm to return
non-finite values, eps is added to both diagonals; a complex result whose imaginary part is
rounding noise is replaced by its real part, and a large imaginary part is an error.

FID is biased upward on finite samples (the fitted covariances are noisy, and noise only adds
distance), and the bias grows as the sample shrinks: compare FIDs computed from the same number
of images only. KID (kid.py) is the unbiased alternative.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._threads import single_threaded


@dataclass(frozen=True)
class GaussianStats:
    """The mean and covariance of a set of features, and how many it came from."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> GaussianStats:
        x = _as_features(features, "features")
        if len(x) < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False), len(x))


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


@single_threaded()
def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (module docstring)."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"the two Gaussians differ in dimension: means {mu1.shape} vs {mu2.shape}, "
            f"covariances {sigma1.shape} vs {sigma2.shape}"
        )
    if sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"covariance of shape {sigma1.shape} for a mean of shape {mu1.shape}")
    from scipy import linalg  # here: loading it costs every `difflab` command a tenth of a second

    diff = mu1 - mu2
    with warnings.catch_warnings():  # the standard code's disp=False: judge the result instead
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: the product of covariances is singular; adding {eps} to their diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # (Sigma_1 Sigma_2)^(1/2) is real for covariances; an imaginary part is rounding noise
        # unless it is large, which means the covariances are not positive semi-definite.
        worst = np.max(np.abs(np.diagonal(covmean).imag))
        if worst > 1e-3:
            raise ValueError(
                f"FID: the matrix square root has an imaginary component of {worst:.3g}; the "
                "covariances are not positive semi-definite (too few samples, or NaNs upstream)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of feature vectors (N_a, D) and (N_b, D)."""
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return fid_from_stats(GaussianStats.from_features(a), GaussianStats.from_features(b))
