"""Kernel distance (KID: Bińkowski et al. 2018, "Demystifying MMD GANs", sec. 4 and app. D).

KID is the squared maximum mean discrepancy between two feature distributions under the cubic
polynomial kernel k(x, y) = (x . y / d + 1)^3, estimated with the unbiased U-statistic

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n),

whose expectation is the population MMD^2 at every sample size (it can come out negative when
the distributions are equal). Unlike FID it can be compared across sample sizes.

As in the standard implementation the estimate is averaged over subsets of `subset_size`
features from each side. Here the subsets are the disjoint blocks of random partitions of the
two sets, so that within one partition the block estimates are independent: their spread gives
a standard error, std / sqrt(blocks per partition). Averaging several partitions only lowers
the error further, so that figure is conservative.
"""

from __future__ import annotations

import math

import numpy as np

from ._threads import single_threaded
from .fid import _as_features


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for all pairs of rows: (M, N)."""
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate MMD^2_u of the polynomial-kernel MMD^2 (module docstring)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per side, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


@single_threaded()
def kid_from_features(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    subset_size: int = 1000,
    num_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float | int]:
    """KID between two feature sets (N_a, D) and (N_b, D).

    The block size is subset_size, or half the smaller set when that is smaller (so there are
    always at least two independent blocks). Partitions are drawn until num_subsets blocks have
    been evaluated. Returns {'kid': mean, 'kid_std': spread of one block's estimate,
    'kid_stderr': conservative standard error of 'kid', 'kid_subset_size', 'kid_subsets'}.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if subset_size < 2 or num_subsets < 1:
        raise ValueError(
            f"need subset_size >= 2 and num_subsets >= 1, got {subset_size} and {num_subsets}"
        )
    m = min(subset_size, len(a) // 2, len(b) // 2)
    if m < 2:
        raise ValueError(f"KID needs at least 4 samples per side, got {len(a)} and {len(b)}")
    blocks = min(len(a) // m, len(b) // m)
    partitions = math.ceil(num_subsets / blocks)
    rng = np.random.default_rng(seed)
    estimates = np.empty((partitions, blocks))
    for p in range(partitions):
        ia, ib = rng.permutation(len(a)), rng.permutation(len(b))
        for j in range(blocks):
            block = slice(j * m, (j + 1) * m)
            estimates[p, j] = mmd2_unbiased(a[ia[block]], b[ib[block]])
    # Within one partition the blocks are disjoint, hence independent: pool their variance.
    within = estimates - estimates.mean(axis=1, keepdims=True)
    std = math.sqrt((within**2).sum() / (partitions * (blocks - 1))) if blocks > 1 else 0.0
    return {
        "kid": float(estimates.mean()),
        "kid_std": std,
        "kid_stderr": std / math.sqrt(blocks),
        "kid_subset_size": m,
        "kid_subsets": partitions * blocks,
    }
