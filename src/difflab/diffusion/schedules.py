"""Noise schedules: discrete beta_t tables and continuous-time alpha(t), sigma(t).

Discrete schedules give beta_1..beta_T for the DDPM forward process
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)  (Ho et al. 2020, eq. 2), so that
alpha_bar_t = prod_{s<=t} (1 - beta_s) and
q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (eq. 4).

Continuous schedules give alpha(t) and sigma(t) for t in [0, 1] directly:
- VP with linear beta(t) (Song et al. 2021, eq. 33): log alpha(t) = -t^2 (b1 - b0) / 4 - t b0 / 2,
  sigma(t)^2 = 1 - alpha(t)^2.
- VE with sigma^t (the score-based write-up's SDE dx = sigma^t dw): alpha(t) = 1 and the marginal
  std is sqrt((sigma^(2t) - 1) / (2 ln sigma)).

All tables are computed in float64: products of a thousand numbers near one lose digits in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear schedule of Ho et al. (2020), sec. 4: beta from 1e-4 to 0.02."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear in sqrt(beta), as in the original latent-diffusion code's "scaled linear"."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas following a sigmoid over [-6, 6], rescaled to [beta_start, beta_end]."""
    s = torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=torch.float64))
    return s * (beta_end - beta_start) + beta_start


def geometric_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas growing by a constant ratio from beta_start to beta_end."""
    return torch.logspace(math.log10(beta_start), math.log10(beta_end), T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), eq. 17.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2, and
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} clipped to max_beta so the last step does not
    become singular (beta_T would be 1 without the clip).
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
    "geometric": geometric_betas,
}


def make_betas(name: str, T: int, *, zero_terminal_snr: bool = False, **kwargs: float) -> Tensor:
    """Build a beta table of length T by schedule name (see BETA_SCHEDULES)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(
            f"unknown noise schedule {name!r}; allowed: {', '.join(sorted(BETA_SCHEDULES))}"
        )
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T must be an integer >= 1, got {T!r}")
    betas = BETA_SCHEDULES[name](T, **kwargs)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so that alpha_bar_T = 0 (Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Algorithm 1).

    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first value is unchanged.
    The last beta becomes exactly 1, so samplers must use a v- or x0-target with this option.
    """
    sqrt_ab = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


# ----------------------------------------------------------------------------- continuous time


def vp_linear_log_alpha(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """log alpha(t) of the VP SDE with linear beta(t) = b0 + t (b1 - b0) (Song et al. 2021)."""
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def vp_cosine_log_alpha(t: Tensor, s: float = 0.008) -> Tensor:
    """log alpha(t) of the continuous cosine schedule (Nichol & Dhariwal 2021, eq. 17)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2)
    f0 = math.cos(s / (1 + s) * math.pi / 2)
    return torch.log(f.clamp(min=1e-20) / f0)


def ve_marginal_std(t: Tensor, sigma: float = 25.0) -> Tensor:
    """Marginal std of dx = sigma^t dw started at x(0): sqrt((sigma^(2t) - 1) / (2 ln sigma))."""
    return torch.sqrt((sigma ** (2 * t) - 1.0) / (2 * math.log(sigma)))


def describe_karras_grid(sigma_max: float | None, rho: float | None) -> str:
    """" (Karras grid from sigma 40, rho 12)": what a sampling line, a picture's title or an
    eval report adds for a sampling grid (Karras et al. 2022, eq. 5) that is not the
    sampler's own; "" when both are None."""
    words = [f"from sigma {sigma_max:g}"] if sigma_max is not None else []
    words += [f"rho {rho:g}"] if rho is not None else []
    return f" (Karras grid {', '.join(words)})" if words else ""
