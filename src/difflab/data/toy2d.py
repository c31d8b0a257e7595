"""2-D toy distributions for learning tests and pictures: Gaussian mixtures on a ring
(8 modes) and a grid (25 modes), the classic mode-collapse checks of the GAN literature
(e.g. Srivastava et al. 2017, VEEGAN), two moons and a swiss roll.

All are float32 points (N, 2), drawn from a seeded torch.Generator, and roughly centred
with a spread of order 1, as diffusion models expect. The mixtures expose their parameters
(GaussianMixture) so a test can measure how many modes a model's samples reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import PointData

TOY2D_NAMES = ("ring", "grid", "moons", "swiss_roll")


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture in the plane: sum_k w_k N(means[k], std^2 I)."""

    means: torch.Tensor  # (K, 2) float32
    std: float
    weights: torch.Tensor  # (K,) float32, sums to 1

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n points; returns (points (n, 2), component index (n,) int64)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, generator=generator)
        return self.means[component] + self.std * noise, component

    def nearest_mode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For points (N, 2): (index of the nearest mean (N,), distance to it (N,))."""
        dist = torch.cdist(x.float(), self.means)  # (N, K)
        d, k = dist.min(dim=1)
        return k, d

    def mode_coverage(
        self, x: torch.Tensor, n_std: float = 3.0, min_count: int = 1
    ) -> dict[str, object]:
        """How well samples x (N, 2) cover the mixture.

        A sample is "in" a mode when within n_std standard deviations of its nearest mean;
        a mode is covered when at least min_count samples are in it. Returns
        {"modes_covered": int, "num_modes": int, "fraction_in_modes": float,
        "counts": (K,) int64 tensor of samples in each mode}.
        """
        k, d = self.nearest_mode(x)
        inside = d <= n_std * self.std
        counts = torch.bincount(k[inside], minlength=self.num_modes)
        return {
            "modes_covered": int((counts >= min_count).sum()),
            "num_modes": self.num_modes,
            "fraction_in_modes": float(inside.float().mean()) if len(x) else 0.0,
            "counts": counts,
        }


def ring_mixture(n_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """n_modes equal Gaussians evenly spaced on a circle, the first on the +x axis."""
    angle = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means.float(), std, torch.full((n_modes,), 1.0 / n_modes))


def grid_mixture(side: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """side x side equal Gaussians on a square grid centred on the origin."""
    axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    k = side * side
    return GaussianMixture(means.float(), std, torch.full((k,), 1.0 / k))


def two_moons(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles (as scikit-learn's make_moons, with random angles),
    shifted to centre on the origin. Returns (points (n, 2), moon index (n,))."""
    label = torch.randint(0, 2, (n,), generator=generator)
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.stack([t.cos(), t.sin()], dim=1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    points = torch.where(label[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    return points + noise * torch.randn(n, 2, generator=generator), label


def swiss_roll(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The 2-D swiss roll: t (cos t, sin t) / 10 for t uniform in [1.5 pi, 4.5 pi]
    (scikit-learn's make_swiss_roll seen from above, scaled by 1/10)."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    points = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 10
    return points + noise * torch.randn(n, 2, generator=generator)


def make_toy2d(name: str, n: int = 10_000, seed: int = 0) -> PointData:
    """Draw n points of toy set `name` ("ring", "grid", "moons", "swiss_roll")."""
    if name not in TOY2D_NAMES:
        raise ValueError(f"unknown toy2d set {name!r}: allowed {', '.join(TOY2D_NAMES)}")
    if n < 1:
        raise ValueError(f"toy2d needs n >= 1 points, got {n}")
    generator = torch.Generator().manual_seed(seed)
    mixture = None
    class_names = None
    if name in ("ring", "grid"):
        mixture = ring_mixture() if name == "ring" else grid_mixture()
        points, labels = mixture.sample(n, generator)
        class_names = tuple(f"mode {k}" for k in range(mixture.num_modes))
    elif name == "moons":
        points, labels = two_moons(n, generator=generator)
        class_names = ("upper moon", "lower moon")
    else:
        points, labels = swiss_roll(n, generator=generator), None
    return PointData(points.float(), labels, class_names, f"toy2d/{name}", mixture)
