"""Fixed-step integrators of the probability-flow ODE in t: the samplers of flow matching.

Rectified flow samples by integrating dx/dt = v(x, t) from noise at t_max down to t_min (Liu et
al. 2023, sec. 2; Esser et al. 2024 sample Stable Diffusion 3 this way). The velocity comes
from the denoiser's prediction, v = alpha'(t) x0 + sigma'(t) eps
(`difflab.diffusion.flow.probability_flow_velocity`), which for a `FlowProcess` is
eps - x0, the network's own output; for other processes it is their probability-flow ODE in t.

- `sample_flow_euler`: x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i). On a FlowProcess this is
  exactly DDIM (eta = 0), since x = (1 - t) x0 + t eps holds for the predictions.
- `sample_flow_heun`: Heun's second-order method (explicit trapezoid), the t-space counterpart
  of Karras et al. (2022) Algorithm 1: an Euler step, a second velocity there, and the step
  taken with their mean.

Both return the denoised x0 prediction at the last time (for a FlowProcess, x - t_min v: the
Euler step to t = 0). A uniform grid in t suits the flow path, whose velocity is constant along
straight trajectories; other grids work too.
"""

from __future__ import annotations

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.flow import probability_flow_velocity
from difflab.diffusion.noise import GeneratorLike
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor


@torch.no_grad()
def _integrate(
    denoiser: Denoiser, x: Tensor, timesteps: Tensor, heun: bool, callback: Callback
) -> Tensor:
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    for i, t in enumerate(ts):
        pred = denoiser(x, t)
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=len(ts))
        if i + 1 < len(ts):
            s = ts[i + 1]
            dt = float(s - t)
            v = probability_flow_velocity(process, x, t, pred)
            x_next = x + dt * v  # Euler
            if heun:
                v_next = probability_flow_velocity(process, x_next, s, denoiser(x_next, s))
                x_next = x + dt * 0.5 * (v + v_next)  # trapezoid: Heun's 2nd-order step
            x = x_next
    return pred.x0


def sample_flow_euler(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
) -> Tensor:
    """Euler steps in t on the probability-flow ODE (= DDIM on a FlowProcess).
    NFE = len(timesteps). Deterministic: `generator` is unused."""
    return _integrate(denoiser, x, timesteps, False, callback)


def sample_flow_heun(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
) -> Tensor:
    """Heun (trapezoid) steps in t on the probability-flow ODE, second order.
    NFE = 2 len(timesteps) - 1. Deterministic: `generator` is unused."""
    return _integrate(denoiser, x, timesteps, True, callback)
