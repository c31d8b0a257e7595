"""Probability-flow ODE sampler with an adaptive off-the-shelf solver (scipy's solve_ivp).

Song et al. 2021, "Score-Based Generative Modeling through SDEs", sec. 4.3 and app. D.3:
dx/dt = f x - 1/2 g^2 score(x, t) (eq. 13) carries the prior at t_max to the data at t_min
along deterministic paths with the same marginals as the reverse SDE. As in their code, the
whole batch is one ODE system solved by RK45 (Dormand–Prince) with rtol = atol = 1e-5, so the
number of denoiser evaluations is chosen by the solver, not by a step count. Fixed-step Euler /
Heun integrators of the same ODE live in karras.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike
from difflab.diffusion.process import as_time
from difflab.diffusion.sde import probability_flow_drift
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor

ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def check_solver_options(method: str, rtol: float, atol: float) -> None:
    """Reject an unknown solve_ivp method or non-positive tolerances with a clear message."""
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; allowed: {', '.join(ODE_METHODS)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol!r}, atol={atol!r}")


@torch.no_grad()
def sample_ode(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Solve the probability-flow ODE (Song et al. 2021, eq. 13) from timesteps[0] to
    timesteps[-1] with scipy.integrate.solve_ivp, then return the denoised x0 at the end.

    Only the endpoints of `timesteps` matter; the solver picks its own steps. The sampler is
    deterministic (`generator` is accepted for a uniform signature and unused). The callback
    is called at every drift evaluation with 'i' the evaluation index, 'nfe' the count so far
    and 'total' None (unknown in advance); evaluations of rejected steps are included, so 't'
    may move back. With return_info=True the result is (x0, info) with info's 'nfe' (denoiser
    evaluations, the final denoise included), 'steps' (accepted solver steps) and 'message'.
    """
    check_solver_options(method, rtol, atol)
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    shape, dtype, device = x.shape, x.dtype, x.device
    nfe = 0

    def velocity(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        xt = torch.tensor(y, dtype=torch.float64).reshape(shape).to(device=device, dtype=dtype)
        tt = as_time(t, shape[0], device)
        pred = denoiser(xt, tt)
        nfe += 1
        emit(callback, x=xt, i=nfe - 1, t=float(t), denoised=pred.x0, total=None, nfe=nfe)
        # dx/dt = f x - 1/2 g^2 score (probability-flow ODE)
        v = probability_flow_drift(denoiser, xt, tt, pred)
        if not bool(torch.isfinite(v).all()):
            raise RuntimeError(f"the probability-flow drift is not finite at t = {t:.6g}")
        return v.double().cpu().numpy().reshape(-1)

    steps, message = 0, "no integration (one time given)"
    if len(ts) > 1:
        y0 = x.detach().double().cpu().numpy().reshape(-1)
        # imported here: scipy.integrate takes about 0.4 s to load, which every `difflab`
        # command (even --help) paid for two samplers that need it
        from scipy.integrate import solve_ivp

        sol = solve_ivp(
            velocity, (float(ts[0]), float(ts[-1])), y0, method=method, rtol=rtol, atol=atol
        )
        if not sol.success:
            raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
        x = torch.tensor(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
        steps, message = len(sol.t) - 1, sol.message
    x0 = denoiser(x, as_time(ts[-1], shape[0], device)).x0
    nfe += 1
    if return_info:
        return x0, {"nfe": nfe, "steps": steps, "message": message}
    return x0
