"""Euler and Heun samplers of Karras et al. (2022), "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithms 1 and 2, for any difflab process.

They work on the VE view of the process: x_ve = x / alpha with noise level
sigma = sigma_ve(t) = sigma / alpha, where the probability-flow ODE is dx_ve / d sigma = d with
d = (x_ve - x0_hat) / sigma (eq. 3 with s(t) = 1). The denoiser is called on alpha(t) x_ve.
Euler on this ODE is exactly deterministic DDIM on the same grid. The Euler step is written
x0_hat + sigma_next d (= x_ve + (sigma_next - sigma) d), which stays exact when sigma is huge
(zero-terminal-SNR schedules) instead of cancelling two numbers of size sigma.

Optional churn (Algorithm 2, lines 4-6): before each step, noise is added to raise sigma to
sigma_hat = sigma (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1) for sigma in
[S_tmin, S_tmax]; sigma_hat is capped at the process' largest sigma_ve.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike, randn_like
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor


def _churn(
    process,
    x_ve: Tensor,
    t: Tensor,
    sigma: float,
    n: int,
    generator: GeneratorLike,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
):
    """Algorithm 2, lines 4-6: (x_ve, t, sigma) raised to sigma_hat, or unchanged."""
    gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x_ve, t, sigma
    s_max = float(process.sigma_ve(torch.tensor(process.t_max, dtype=torch.float64)))
    s_hat = min(sigma * (1 + gamma), s_max)
    x_ve = x_ve + s_noise * math.sqrt(max(s_hat**2 - sigma**2, 0.0)) * randn_like(x_ve, generator)
    t = process.t_from_sigma_ve(torch.tensor(s_hat, dtype=torch.float64))
    t = t.clamp(process.t_min, process.t_max)
    return x_ve, t, s_hat


@torch.no_grad()
def _karras(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    heun: bool,
    generator,
    callback,
    churn: tuple[float, float, float, float],
) -> Tensor:
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    sig = process.sigma_ve(ts).tolist()
    x_ve = x / float(process.alpha(ts[0]))
    for i in range(len(ts)):
        x_ve, t, s_i = _churn(process, x_ve, ts[i], sig[i], len(ts), generator, *churn)
        x = float(process.alpha(t)) * x_ve
        pred = denoiser(x, t)
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            d = (x_ve - pred.x0) / s_i
            x_next = pred.x0 + sig[i + 1] * d  # Euler step x_ve + (sigma_next - sigma) d
            if heun:
                x0_next = denoiser(float(process.alpha(ts[i + 1])) * x_next, ts[i + 1]).x0
                d_next = (x_next - x0_next) / sig[i + 1]
                x_next = x_ve + (sig[i + 1] - s_i) * 0.5 * (d + d_next)  # Heun's 2nd-order step
            x_ve = x_next
    return pred.x0


def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps, Karras et al. (2022) Algorithm 1 (plus optional churn of Algorithm 2).

    NFE = len(timesteps); without churn it is deterministic and equals DDIM (eta = 0).
    """
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    return _karras(denoiser, x, timesteps, False, generator, callback, churn)


def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun steps, Karras et al. (2022) Algorithm 2 (deterministic when s_churn = 0).

    The last step to clean data is the denoised prediction (Alg. 2's Euler step to sigma = 0),
    so NFE = 2 len(timesteps) - 1. The trapezoid correction assumes d changes little over a
    step: from a huge sigma (a uniform grid on the discrete cosine table, sigma_ve ~ 2e4, or a
    zero-terminal-SNR start) the first step diverges. Use a Karras grid with a moderate top
    (`sample`'s default caps it at 80, as Karras et al. do).
    """
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    return _karras(denoiser, x, timesteps, True, generator, callback, churn)


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral Euler (k-diffusion's sample_euler_ancestral): an Euler step down to sigma_down,
    then fresh noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2, with
    sigma_up = eta sigma_next sqrt(1 - sigma_next^2 / sigma^2). At eta = 1 the step is exactly
    DDPM's posterior step (mean and variance of q(x_s | x_t, x0_hat)). NFE = len(timesteps)."""
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    sig, alpha = process.sigma_ve(ts).tolist(), process.alpha(ts).tolist()
    x_ve = x / alpha[0]
    for i, t in enumerate(ts):
        pred = denoiser(alpha[i] * x_ve, t)
        emit(callback, x=alpha[i] * x_ve, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            s, s_next = sig[i], sig[i + 1]
            s_up = min(s_next, eta * s_next * math.sqrt(1 - s_next**2 / s**2))
            s_down = math.sqrt(s_next**2 - s_up**2)
            x_ve = pred.x0 + s_down * (x_ve - pred.x0) / s  # Euler step to sigma_down
            x_ve = x_ve + s_noise * s_up * randn_like(x_ve, generator)
    return pred.x0
