"""Sampling time grids: which times a sampler evaluates the model at.

Discrete processes (t = 0-based step index 0..T-1) follow the definitions in Lin et al. (2024),
"Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2, and diffusers, shifted
from the paper's 1-based t to difflab's 0-based step index:

- "linspace" / "uniform": round(linspace(0, T-1, steps)), reversed. Starts at T-1, ends at 0.
- "leading": arange(0, steps) * (T // steps) + offset, reversed. Ends at `offset`; the first
  time is below T-1 unless T // steps divides evenly from the top. Stable Diffusion's config
  uses offset=1 (diffusers' `steps_offset`); difflab's default is offset=0, Table 2 exactly.
- "trailing": round(arange(T, 0, -T / steps)) - 1. Starts at T-1 (what Lin et al. recommend)
  but ends at round(T / steps) - 1, so the final denoising happens from a noisy time.
- "karras": Karras et al. (2022), eq. 5: sigma_i = (sigma_max^(1/rho) + i / (steps - 1)
  (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho on the VE noise level sigma_ve = sigma / alpha,
  between sigma_ve(t_max) and sigma_ve(t_min), mapped back with process.t_from_sigma_ve. For
  discrete processes these are fractional step indices (the process interpolates between them).
  `sigma_min` / `sigma_max` narrow that range (k-diffusion's get_sigmas_karras); the grid then
  starts below t_max. Useful where sigma_ve(t_max) is huge: the discrete cosine schedule's
  clipped last beta gives sigma_ve(T-1) ~ 2e4, so the default grid spends more than half of its
  points above sigma 100 where nothing happens, and Heun's first step there is unstable;
  Karras et al. use sigma_max = 80 for VP models.

Continuous processes (t in [t_min, t_max]) use the same ideas without rounding: "uniform" and
"linspace" are linspace(t_max, t_min, steps); "leading" is t_min + k (t_max - t_min) / steps
reversed (k = 0..steps-1), "trailing" is t_max - k (t_max - t_min) / steps.

A single step (steps = 1) evaluates at t_max for every spacing except "leading".
"""

from __future__ import annotations

import torch

from difflab.diffusion.process import NoiseProcess

Tensor = torch.Tensor

SPACINGS = ("uniform", "linspace", "leading", "trailing", "karras")


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: noise levels from sigma_max down to sigma_min, float64."""
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho  # eq. 5


def make_timesteps(
    process: NoiseProcess,
    steps: int,
    spacing: str = "uniform",
    *,
    rho: float = 7.0,
    offset: int = 0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> Tensor:
    """A strictly decreasing float64 grid of `steps` times for `process` (see module docstring)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    lo, hi = process.t_min, process.t_max
    if process.discrete and steps > process.T:
        raise ValueError(
            f"steps must be between 1 and T = {process.T} for this discrete process, got {steps}"
        )
    if hi == lo:  # a process with a single time (T = 1): every grid is that time
        return torch.tensor([hi], dtype=torch.float64)
    k = torch.arange(steps, dtype=torch.float64)
    if spacing == "karras":
        s_lo = float(process.sigma_ve(torch.tensor(lo, dtype=torch.float64)))
        s_hi = float(process.sigma_ve(torch.tensor(hi, dtype=torch.float64)))
        s_min = s_lo if sigma_min is None else sigma_min
        s_max = s_hi if sigma_max is None else sigma_max
        if not s_lo * (1 - 1e-9) <= s_min < s_max <= s_hi * (1 + 1e-9):
            raise ValueError(
                f"need sigma_ve(t_min) = {s_lo:.4g} <= sigma_min < sigma_max <= "
                f"sigma_ve(t_max) = {s_hi:.4g}, got {s_min:.4g}, {s_max:.4g}"
            )
        ts = process.t_from_sigma_ve(karras_sigmas(s_min, s_max, steps, rho)).clamp(lo, hi)
        if sigma_max is None:
            ts[0] = hi  # exact ends: the inverse map may be off by rounding
        if sigma_min is None and steps > 1:
            ts[-1] = lo
    elif not process.discrete:
        if spacing in ("uniform", "linspace"):
            ts = torch.linspace(hi, lo, steps, dtype=torch.float64)
        elif spacing == "leading":
            ts = (lo + k * (hi - lo) / steps).flip(0)
        else:  # trailing
            ts = hi - k * (hi - lo) / steps
    else:
        T = process.T
        if spacing in ("uniform", "linspace"):
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
            ts[0] = T - 1  # one step: start from pure noise, not from step 0
        elif spacing == "leading":
            if not 0 <= offset <= T - 1 - (steps - 1) * (T // steps):
                raise ValueError(f"offset must keep the grid inside [0, {T - 1}], got {offset}")
            ts = (k * (T // steps) + offset).flip(0)
        else:  # trailing
            ts = torch.round(T - k * (T / steps)) - 1
    return ts


def truncate_timesteps(timesteps: Tensor, process, strength: float) -> Tensor:
    """The part of a sampling grid at or below the time img2img starts from at `strength`
    (process.img2img_time: strength of the way from t_min to t_max, as diffusers does for its
    schedulers, or the cosine schedule's noise level where time is a noise level): fewer steps
    for a weaker edit."""
    t_start = process.img2img_time(strength)
    kept = timesteps[timesteps <= t_start + 1e-9]
    if len(kept) < 2:  # keep at least one step
        kept = timesteps[-2:]
    return kept
