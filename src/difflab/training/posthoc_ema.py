"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models" (EDM2), sec. 3 and appendix C): choose how long the weight average is after
training, from snapshots of a few averages kept while training.

How long the EMA of the weights should be is one of the settings FID depends on most, and its
best value depends on the model, the data and the budget; trying a value used to mean training
again. EDM2 instead tracks *power-function* EMAs, whose profile over the run is proportional to
t^gamma: their length is relative to the run's own (`sigma_rel`, the standard deviation of the
profile divided by the step it is taken at), so one setting suits a run of any length. The
run saves the averages of two or three lengths every few hundred steps; afterwards, the
average of any other length at any saved step is the least-squares combination of those
snapshots whose profile comes closest to the one wanted.

The profiles here are the exact discrete ones of the update difflab runs, not EDM2's
continuous approximation. With beta_t = (1 - 1/t)^(gamma + 1) at step t = 1, 2, ... (EDM2 eq. 4
with one batch a unit of time), the average after T steps gives the weights of step s

    w_T(s) = (s^(gamma+1) - (s-1)^(gamma+1)) / T^(gamma+1),   1 <= s <= T,

because the factors (s/(s+1))^(gamma+1) ... ((T-1)/T)^(gamma+1) telescope; they sum to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# sigma_rel of the uniform average of the whole run (gamma = 0), the longest a power EMA can be
MAX_SIGMA_REL = 1 / math.sqrt(12)


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative length of the power EMA with exponent `gamma` (EDM2 eq. 3): the standard
    deviation of the profile (gamma + 1) t^gamma on [0, 1]."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent whose power EMA has relative length `sigma_rel`, in (0, 1/sqrt(12)].
    gamma_to_sigma_rel falls monotonically for gamma >= 0, so bisection finds it."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(
            f"an EMA length sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}] (a share of the "
            f"run: 0.05-0.15 is typical), got {sigma_rel}"
        )
    low, high = 0.0, 1.0
    while gamma_to_sigma_rel(high) > sigma_rel:
        high *= 2
    for _ in range(200):  # to float precision
        mid = (low + high) / 2
        low, high = (mid, high) if gamma_to_sigma_rel(mid) > sigma_rel else (low, mid)
    return (low + high) / 2


def beta(gamma: float, step: int) -> float:
    """The decay of the power EMA's update at step `step` (1-based): 0 at the first step, so
    the average starts from the first trained weights, whatever came before."""
    return (1 - 1 / step) ** (gamma + 1)


def profile(gamma: float, step: int, length: int) -> np.ndarray:
    """The weight each step 1..`length` has in the power EMA taken at `step` (zero after it):
    the telescoped product in the module docstring, in float64."""
    if not 1 <= step <= length:
        raise ValueError(f"step must be in 1..{length}, got {step}")
    s = np.arange(1, step + 1, dtype=np.float64) / step
    w = np.zeros(length)
    # (s^(g+1) - (s-1)^(g+1)) / T^(g+1), written with s/T to stay in range for large gamma
    w[:step] = s ** (gamma + 1) - (s - 1 / step) ** (gamma + 1)
    return w


def solve_coefficients(
    snapshots: Sequence[tuple[float, int]], gamma: float, step: int
) -> tuple[np.ndarray, float]:
    """Weights for the snapshots (each its gamma and step) whose combination comes closest,
    in least squares over the steps, to the power EMA of exponent `gamma` at `step` (EDM2
    appendix C.3, with the exact discrete profiles). Returns the coefficients and the fit's
    relative error ||sum c_i w_i - w|| / ||w||: 0 for a target among the snapshots, small
    between them, large for one far outside what they span."""
    if not snapshots:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    length = max(step, *(s for _, s in snapshots))
    basis = np.stack([profile(g, s, length) for g, s in snapshots], axis=1)
    target = profile(gamma, step, length)
    coeffs, *_ = np.linalg.lstsq(basis, target, rcond=None)
    error = float(np.linalg.norm(basis @ coeffs - target) / np.linalg.norm(target))
    return coeffs, error


def profile_sigma_rel(weights: np.ndarray, step: int) -> float:
    """The relative length of any averaging profile over steps 1..len(weights) taken at `step`:
    its standard deviation over the steps, divided by `step` (for checks and reports)."""
    s = np.arange(1, len(weights) + 1, dtype=np.float64)
    total = weights.sum()
    mean = (weights * s).sum() / total
    return float(math.sqrt(max((weights * (s - mean) ** 2).sum() / total, 0.0)) / step)
