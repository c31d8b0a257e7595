"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z        (eq. 12, alpha = sqrt(a_bar))
c = eta * sqrt(sigma_s^2 / sigma_t^2) * sqrt(sigma_{t|s}^2)      (eq. 16, general process)

where sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 (= 1 - a_t / a_s for VP), so c^2
is the forward-process posterior variance times eta^2. eta = 0 is the deterministic DDIM (the
probability-flow ODE's first-order exponential integrator, also Karras' Euler in sigma_ve);
eta = 1 is exactly DDPM ancestral sampling with the posterior variance, draw for draw.
"""

from __future__ import annotations

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike, randn_like
from difflab.samplers.common import Callback, check_timesteps, emit
from difflab.samplers.ddpm import maybe_clip

Tensor = torch.Tensor


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    eta: float = 0.0,
    clip_denoised: bool | str = False,
) -> Tensor:
    """DDIM, Song et al. (2021) eq. 12 with sigma(eta) of eq. 16. NFE = len(timesteps).

    eta in [0, 1]; noise is drawn only when eta > 0. The last step returns the denoised x0.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM), got {eta}")
    denoiser = maybe_clip(denoiser, clip_denoised)
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    for i, t in enumerate(ts):
        pred = denoiser(x, t)
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            s = ts[i + 1]
            a_s, sig_s, sig_t = (
                float(v) for v in (process.alpha(s), process.sigma(s), process.sigma(t))
            )
            c = eta * sig_s / sig_t * float(process.transition_variance(t, s)) ** 0.5  # eq. 16
            x = a_s * pred.x0 + max(sig_s**2 - c**2, 0.0) ** 0.5 * pred.eps  # eq. 12
            if eta > 0:
                x = x + c * randn_like(x, generator)
    return pred.x0
