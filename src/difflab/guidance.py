"""Classifier-free guidance around any denoiser (Ho & Salimans 2022, eq. 6).

eps~ = eps(x, t, null) + w (eps(x, t, c) - eps(x, t, null)). Both x0 and eps are affine in the
network output at fixed (x, t), so the same combination applies to the x0 prediction and every
sampler gets guidance without knowing about it. w = 1 is the plain conditional model, w = 0
the unconditional one.
"""

from __future__ import annotations

import torch

from difflab.diffusion.denoiser import Denoiser, Prediction

Tensor = torch.Tensor


class GuidedDenoiser:
    """Combine a conditional and an unconditional denoiser with guidance scale w."""

    def __init__(self, conditional: Denoiser, unconditional: Denoiser, scale: float):
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.cond, self.uncond, self.scale = conditional, unconditional, float(scale)
        self.process = conditional.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        c = self.cond(x, t)
        if self.scale == 1.0:
            return c
        u = self.uncond(x, t)
        w = self.scale
        return Prediction(u.x0 + w * (c.x0 - u.x0), u.eps + w * (c.eps - u.eps))
