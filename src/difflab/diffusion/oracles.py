"""Closed-form optimal denoisers for Gaussian and Gaussian-mixture data.

For data x0 ~ sum_k w_k N(mu_k, s_k^2 I), the noisy marginal is
x_t | k ~ N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I), and the minimum-MSE denoiser is
E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)),
with r_k the posterior component probabilities. Plugging this in for a trained network lets
every sampler be tested against the known data distribution with no training at all: a
test that can fail only for the right reason.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Prediction
from difflab.diffusion.process import NoiseProcess, as_time

Tensor = torch.Tensor


class GaussianMixtureOracle:
    """The exact denoiser for isotropic Gaussian-mixture data; a single Gaussian is K = 1."""

    def __init__(
        self,
        process: NoiseProcess,
        means: Tensor,
        stds: Tensor | float,
        weights: Tensor | None = None,
    ):
        self.process = process
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim == 1:
            self.means = self.means[None]
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        if not (self.stds.isfinite() & (self.stds > 0)).all():
            raise ValueError(f"a component's std must be a finite number > 0, got "
                             f"{self.stds.tolist()}")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights
        self.weights = torch.as_tensor(w, dtype=torch.float64) / torch.as_tensor(w).sum()
        self.nfe = 0  # model evaluations, counted for benchmarks

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _component_logpdf(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log N(x; alpha mu_k, var_k I) for every k -> (B, K), and var_k -> (B, K)."""
        var = alpha[:, None] ** 2 * self.stds[None] ** 2 + sigma[:, None] ** 2  # (B, K)
        diff = x[:, None, :] - alpha[:, None, None] * self.means[None]  # (B, K, D)
        sq = (diff**2).sum(-1)
        logpdf = -0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logpdf, var

    def _flat(self, x: Tensor) -> Tensor:
        """x as (B, D) float64, refused in one line when its points are not D numbers each."""
        if x.ndim < 1 or x.shape[0] == 0 or x[0].numel() != self.dim:
            raise ValueError(f"this oracle's data has {self.dim} dimensions: give x of shape "
                             f"(N, {self.dim}) with N >= 1, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1).double()

    def log_prob(self, x: Tensor, t: Tensor | float | None = None) -> Tensor:
        """log p_t(x) of the noisy marginal (t=None: the data density itself)."""
        flat = self._flat(x)
        if t is None:
            alpha = torch.ones(flat.shape[0], dtype=torch.float64)
            sigma = torch.zeros(flat.shape[0], dtype=torch.float64)
        else:
            t = as_time(t, flat.shape[0])
            alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        logpdf, _ = self._component_logpdf(flat, alpha, sigma)
        return torch.logsumexp(logpdf + torch.log(self.weights)[None], dim=1)

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        self.nfe += 1
        shape, dtype = x.shape, x.dtype
        flat = self._flat(x)
        t = as_time(t, shape[0]).to(torch.float64).cpu()
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        logpdf, var = self._component_logpdf(flat, alpha, sigma)
        resp = torch.softmax(logpdf + torch.log(self.weights)[None], dim=1)  # (B, K)
        gain = alpha[:, None] * self.stds[None] ** 2 / var  # (B, K)
        x0_k = self.means[None] + gain[..., None] * (
            flat[:, None, :] - alpha[:, None, None] * self.means[None]
        )
        x0 = (resp[..., None] * x0_k).sum(1)
        eps = (flat - alpha[:, None] * x0) / sigma[:, None]
        return Prediction(x0.reshape(shape).to(dtype), eps.reshape(shape).to(dtype))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n samples of the data distribution, (n, D), float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z


def gaussian_oracle(
    process: NoiseProcess, mean: Tensor | float, std: float, dim: int
) -> GaussianMixtureOracle:
    """The optimal denoiser for N(mean, std^2 I) in `dim` dimensions."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a whole number >= 1, got {dim!r}")
    mu = torch.as_tensor(mean, dtype=torch.float64).expand(dim).clone()
    return GaussianMixtureOracle(process, mu[None], std)


def ring_mixture(
    process: NoiseProcess, k: int = 8, radius: float = 2.0, std: float = 0.1
) -> GaussianMixtureOracle:
    """A 2-D mixture of k Gaussians evenly spaced on a circle, equal weights."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return GaussianMixtureOracle(process, means, std)
