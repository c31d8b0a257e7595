"""DEIS: Diffusion Exponential Integrator Sampler (Zhang & Chen 2022, "Fast Sampling of
Diffusion Models with Exponential Integrator"), the tAB-DEIS variant.

In the VE variable x / alpha the probability-flow ODE is d(x / alpha) = eps d rho with
rho = sigma / alpha (sigma_ve), so from t to s exactly
    x_s / alpha_s = x_t / alpha_t + int_{rho_t}^{rho_s} eps(tau(rho)) d rho      (eq. 11, 15)
tAB-DEIS extrapolates eps with the Lagrange polynomial in time tau through the last `order`
predictions, eps(tau) ~ sum_j l_j(tau) eps_j, giving x_s = alpha_s (x_t / alpha_t + sum_j C_j eps_j)
with C_j = int_{rho_t}^{rho_s} l_j(tau(rho)) d rho. The C_j are computed here by 32-point
Gauss-Legendre quadrature in log rho, mapping rho back to tau with process.t_from_sigma_ve.
Since the l_j sum to one, this is the DDIM step plus corrections,
    x_s / alpha_s = x0_hat + rho_s eps_0 + sum_{j>=1} C_j (eps_j - eps_0),
which is how it is evaluated (exact even when rho_t is huge, as with zero terminal SNR).

`order` counts the predictions used (1 = DDIM, 2, 3, 4); the paper's tAB-r is order r + 1.
The first steps warm up with lower order.
"""

from __future__ import annotations

import numpy as np
import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike
from difflab.diffusion.process import NoiseProcess
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor

_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(32))


def deis_coefficients(process: NoiseProcess, t: Tensor, s: Tensor, taus: Tensor) -> list[float]:
    """C_j = int_{rho_t}^{rho_s} l_j(tau(rho)) d rho for the Lagrange basis on nodes `taus`."""
    lo, hi = torch.log(process.sigma_ve(s)), torch.log(process.sigma_ve(t))
    u = 0.5 * (hi + lo) + 0.5 * (hi - lo) * _NODES  # Gauss-Legendre nodes in log rho
    rho = torch.exp(u)
    w = -0.5 * (hi - lo) * _WEIGHTS * rho  # d rho = rho du; minus: we integrate from rho_t down
    tau = process.t_from_sigma_ve(rho)
    coefs = []
    for j in range(len(taus)):
        basis = torch.ones_like(tau)
        for m in range(len(taus)):
            if m != j:
                basis = basis * (tau - taus[m]) / (taus[j] - taus[m])
        coefs.append(float((w * basis).sum()))
    return coefs


@torch.no_grad()
def sample_deis(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    order: int = 3,
) -> Tensor:
    """tAB-DEIS (Zhang & Chen 2022, sec. 4). NFE = len(timesteps). Deterministic: `generator`
    is unused. The last step returns the denoised prediction."""
    if order not in (1, 2, 3, 4):
        raise ValueError(f"DEIS order must be one of 1, 2, 3, 4, got {order!r}")
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    alpha = process.alpha(ts).tolist()
    hist: list[Tensor] = []  # eps predictions, newest first
    for i, t in enumerate(ts):
        pred = denoiser(x, t)
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            hist = [pred.eps, *hist][:order]
            taus = ts[i + 1 - len(hist) : i + 1].flip(0)  # times of hist, newest first
            coefs = deis_coefficients(process, t, ts[i + 1], taus)
            rho_s = float(process.sigma_ve(ts[i + 1]))
            x_ve = pred.x0 + rho_s * pred.eps  # DDIM, then the extrapolation terms of eq. 15
            for c, e in zip(coefs[1:], hist[1:], strict=True):
                x_ve = x_ve + c * (e - pred.eps)
            x = alpha[i + 1] * x_ve
    return pred.x0
