"""Precision and recall with k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019, "Improved
Precision and Recall Metric for Assessing Generative Models", sec. 3), and the agreement of a
classifier with the classes a conditional model was asked for.

Each set of features approximates its distribution's support by the union of balls around its
points, each ball reaching to the point's k-th nearest neighbour in the same set (k = 3, the
paper's choice). Then

    precision = fraction of generated samples inside the real manifold  (are samples realistic?)
    recall    = fraction of real samples inside the generated manifold  (is the data covered?)

Both depend on the sample sizes (more points, smaller balls), so the larger set is cut to the
size of the smaller one before comparing (the paper uses equal sizes, 50,000 each).
"""

from __future__ import annotations

import numpy as np
import torch

from ._threads import single_threaded
from .fid import _as_features

_BLOCK = 2048  # rows of the distance matrix held at once: 2048 x N float64


def _pairwise_sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x_i - y_j|^2 for all pairs, float64, clamped at 0 against rounding."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ y.T + (y * y).sum(1)[None]
    return d.clamp_(min=0.0)


@single_threaded()
def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each point to its k-th nearest other point in the same set, (N,)."""
    x = torch.from_numpy(_as_features(features, "features"))
    if not 1 <= k < len(x):
        raise ValueError(f"k must be between 1 and {len(x) - 1} for {len(x)} points, got {k}")
    radii = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), _BLOCK):
        d = _pairwise_sq_distances(x[start : start + _BLOCK], x)
        # the k+1 smallest include the point itself (distance 0), as in the reference code
        radii[start : start + _BLOCK] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii.sqrt_().numpy()


@single_threaded()
def manifold_coverage(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each point, whether it lies in some ball (manifold[j], radii[j]): (N,) bool."""
    p = torch.from_numpy(_as_features(points, "points"))
    m = torch.from_numpy(_as_features(manifold, "manifold"))
    r2 = torch.from_numpy(np.asarray(radii, dtype=np.float64)) ** 2
    inside = torch.empty(len(p), dtype=torch.bool)
    for start in range(0, len(p), _BLOCK):
        d = _pairwise_sq_distances(p[start : start + _BLOCK], m)
        inside[start : start + _BLOCK] = (d <= r2[None]).any(dim=1)
    return inside.numpy()


def precision_recall(
    real: np.ndarray, fake: np.ndarray, *, k: int = 3, seed: int = 0
) -> dict[str, float | int]:
    """Improved precision and recall of `fake` against `real` features (module docstring).

    Returns {'precision', 'recall', 'pr_k', 'pr_n'} where pr_n is the number of samples used
    from each side (the larger set is cut to the smaller's size by a seeded random choice).
    """
    real = _as_features(real, "real features")
    fake = _as_features(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    n = min(len(real), len(fake))
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per side")
    rng = np.random.default_rng(seed)
    if len(real) > n:
        real = real[np.sort(rng.choice(len(real), n, replace=False))]
    if len(fake) > n:
        fake = fake[np.sort(rng.choice(len(fake), n, replace=False))]
    precision = manifold_coverage(fake, real, knn_radii(real, k)).mean()
    recall = manifold_coverage(real, fake, knn_radii(fake, k)).mean()
    return {"precision": float(precision), "recall": float(recall), "pr_k": k, "pr_n": n}


def class_agreement(
    predicted: np.ndarray, requested: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, float | dict[str, float]]:
    """How often a classifier sees the class a conditional model was asked for.

    Returns {'class_agreement': overall fraction, 'class_agreement_per_class': {name: fraction}}
    (classes never requested are left out).
    """
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    if predicted.shape != requested.shape or predicted.ndim != 1:
        raise ValueError(
            f"{len(requested)} requested labels for {len(predicted)} predictions; give one "
            "label per image"
        )
    if requested.size and (requested.min() < 0 or requested.max() >= len(class_names)):
        raise ValueError(
            f"labels must lie in 0..{len(class_names) - 1} (classes "
            f"{', '.join(class_names)}), got {requested.min()}..{requested.max()}"
        )
    hits = predicted == requested
    per_class = {
        class_names[c]: float(hits[requested == c].mean())
        for c in range(len(class_names))
        if (requested == c).any()
    }
    return {"class_agreement": float(hits.mean()), "class_agreement_per_class": per_class}
