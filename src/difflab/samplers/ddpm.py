"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Alg. 2).

Each step draws x_s ~ N(mu~(x_t, x0_hat), var) with x0_hat the denoiser's prediction and mu~ the
mean of the forward-process posterior q(x_s | x_t, x_0) (eq. 6-7, written for any pair of times
s < t so strided grids work too). The variance is one of the paper's two choices (sec. 3.2):
- "posterior": beta~_t, the posterior variance (optimal for deterministic x_0);
- "beta": beta_t = sigma_{t|s}^2, the forward transition variance (optimal for x_0 ~ N(0, I)).
"""

from __future__ import annotations

import torch

from difflab.diffusion.denoiser import Denoiser, ThresholdedDenoiser
from difflab.diffusion.noise import GeneratorLike, randn_like
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor

VARIANCES = ("posterior", "beta")


def maybe_clip(denoiser: Denoiser, clip_denoised: bool | str) -> Denoiser:
    """Wrap in ThresholdedDenoiser: True -> 'static' [-1, 1], a str names the mode."""
    if clip_denoised is False or clip_denoised is None:
        return denoiser
    return ThresholdedDenoiser(denoiser, "static" if clip_denoised is True else clip_denoised)


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    variance: str = "posterior",
    clip_denoised: bool | str = False,
) -> Tensor:
    """Ancestral sampling, Ho et al. (2020) Algorithm 2, on any time grid. NFE = len(timesteps).

    The last step returns the denoised prediction (Algorithm 2 adds no noise at t = 1 either).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; allowed: {', '.join(VARIANCES)}")
    denoiser = maybe_clip(denoiser, clip_denoised)
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    for i, t in enumerate(ts):
        pred = denoiser(x, t)
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            s = ts[i + 1]
            mean, var = process.posterior(x, pred.x0, t, s)  # mu~_t(x_t, x0_hat), beta~_t (eq. 7)
            if variance == "beta":
                var = process.transition_variance(t, s)  # sigma_t^2 = beta_t (sec. 3.2)
            x = mean + var.sqrt() * randn_like(x, generator)
    return pred.x0
