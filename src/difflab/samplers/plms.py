"""PLMS: the pseudo linear multistep sampler of PNDM (Liu et al. 2022, "Pseudo Numerical Methods
for Diffusion Models on Manifolds", eq. 12-13), the default sampler of the original Stable
Diffusion release (latent-diffusion's plms.py).

The noise predictions are combined with Adams-Bashforth weights as if the steps were equal,
    eps' = (55 e_t - 59 e_{t+1} + 37 e_{t+2} - 9 e_{t+3}) / 24,
and fed to the DDIM-style transfer step (PNDM eq. 11), written for any process:
    x_s = alpha_s (x_t - sigma_t eps') / alpha_t + sigma_s eps'.

Warm-up: difflab uses lower-order Adams-Bashforth for the first steps (weights 1, (3, -1)/2,
(23, -16, 5)/12), so NFE = len(timesteps). PNDM proper warms up with three Runge-Kutta steps
(4 evaluations each) and latent-diffusion's PLMS with one pseudo improved-Euler step (1 extra
evaluation); both cost more evaluations for the same grid.
"""

from __future__ import annotations

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor

# Adams-Bashforth weights by order, newest prediction first.
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@torch.no_grad()
def sample_plms(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    order: int = 4,
) -> Tensor:
    """PLMS (Liu et al. 2022) with lower-order warm-up. NFE = len(timesteps). Deterministic:
    `generator` is unused. The last step returns the denoised prediction."""
    if order not in ADAMS_BASHFORTH:
        raise ValueError(f"PLMS order must be one of {sorted(ADAMS_BASHFORTH)}, got {order!r}")
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    alpha, sigma = process.alpha(ts).tolist(), process.sigma(ts).tolist()
    hist: list[Tensor] = []  # eps predictions, newest first
    for i, t in enumerate(ts):
        pred = denoiser(x, t)
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            hist = [pred.eps, *hist][:order]
            eps = sum(c * e for c, e in zip(ADAMS_BASHFORTH[len(hist)], hist, strict=True))
            # (x - sigma eps') / alpha, written around x0_hat so that it stays exact at alpha ~ 0
            x0 = pred.x0 - sigma[i] / alpha[i] * (eps - pred.eps)
            x = alpha[i + 1] * x0 + sigma[i + 1] * eps  # transfer step (PNDM eq. 11)
    return pred.x0
