"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, app. D.2).

The probability-flow ODE dx/dt = v(x, t) = f x - 1/2 g^2 score(x, t) (eq. 13) is a continuous
normalizing flow, so the instantaneous change of variables (Chen et al. 2018, "Neural ODEs",
thm. 1) gives d log p_t(x(t)) / dt = -div v(x(t), t). Integrating [x, delta] forward from the
data at t_min to t_max with d delta / dt = div v,

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + int_{t_min}^{t_max} div v(x(t), t) dt.

log p_{t_max} is the prior the samplers draw from, N(0, prior_std^2 I) (VP: std 1; VE: the
marginal std sqrt(1 + sigma(1)^2), i.e. data of unit variance, close to sigma(1) itself), so the
result is the log-likelihood of the model that `sample_ode` draws from. Pass `prior_log_prob`
to use another density at t_max (e.g. an oracle's exact marginal).

The divergence is either exact (D backward passes per evaluation: fine for D up to ~64) or
Hutchinson's unbiased estimator div v = E[e^T (dv/dx) e] (Hutchinson 1989; Grathwohl et al.
2019, FFJORD) with one Rademacher or Gaussian probe e per sample held fixed for the whole solve,
which keeps the ODE smooth for the adaptive solver and the log-likelihood estimate unbiased.

t_min: the ODE starts at t_min, not 0, so it measures log p_{t_min}, the data density blurred
by N(0, sigma(t_min)^2). For the VP default t_min = 1e-3 (sigma ~ 0.01) this differs from the
data density by about D sigma^2 / (2 s^2) nats at typical points of data of scale s, and by
d^2 sigma^2 / (2 s^4) at a point d away from the data (0.2 nats for VE's sigma^2 = 1e-5, s = 0.1,
d = 2); pass a smaller t_min when that matters.

Drift values of one sample must not depend on the others in the batch (no batch-norm in
training mode): the divergence sums gradients over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike, randn
from difflab.diffusion.process import as_time
from difflab.diffusion.sde import probability_flow_drift
from difflab.samplers.ode import check_solver_options

Tensor = torch.Tensor

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def gaussian_log_prob(x: Tensor, std: float) -> Tensor:
    """log N(x; 0, std^2 I) per sample, float64."""
    flat = x.reshape(x.shape[0], -1).double()
    d = flat.shape[1]
    return -0.5 * (flat**2).sum(1) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)


def _divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    """sum_j d v_j / d x_j per sample, one backward pass per dimension."""
    flat_v = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for j in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(
            flat_v[:, j].sum(), x, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        div = div + grad.reshape(v.shape[0], -1)[:, j].double()
    return div


def _divergence_hutchinson(v: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    """e^T (dv/dx) e per sample with one vector-Jacobian product (Hutchinson's estimator)."""
    (vjp,) = torch.autograd.grad((v * probe).sum(), x, allow_unused=True, materialize_grads=True)
    return (vjp * probe).reshape(v.shape[0], -1).double().sum(1)


def ode_log_likelihood(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    divergence: str = "exact",
    probe: str = "rademacher",
    generator: GeneratorLike = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """log p(x0) in nats per sample, (B,) float64, via the probability-flow ODE (see module doc).

    divergence: "exact" or "hutchinson" (probe "rademacher" or "gaussian", drawn from
    `generator`, one generator per sample allowed). t_min / t_max default to the process's.
    prior_log_prob: log-density at t_max, called with x(t_max) in float64 and returning (B,);
    default N(0, (alpha^2 + sigma^2)(t_max) I), which is N(0, process.prior_std()^2 I) at the
    process's own t_max.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; allowed: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; allowed: {', '.join(PROBES)}")
    check_solver_options(method, rtol, atol)
    process = denoiser.process
    t0 = process.t_min if t_min is None else float(t_min)
    t1 = process.t_max if t_max is None else float(t_max)
    if not process.t_min - 1e-9 <= t0 < t1 <= process.t_max + 1e-9:
        raise ValueError(
            f"need {process.t_min} <= t_min < t_max <= {process.t_max}, got t_min={t0}, t_max={t1}"
        )
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    batch = shape[0]

    e = None
    if divergence == "hutchinson":
        e = randn(shape, generator, device, dtype)
        if probe == "rademacher":
            e = torch.sign(e)  # sign of a symmetric variable: +-1 with probability 1/2 each

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        x = torch.tensor(y[:-batch]).reshape(shape).to(device=device, dtype=dtype)
        with torch.enable_grad():
            x.requires_grad_(True)
            v = probability_flow_drift(denoiser, x, as_time(t, batch, device))
            div = _divergence_exact(v, x) if e is None else _divergence_hutchinson(v, x, e)
        # d/dt [x, delta] = [v, div v]  (instantaneous change of variables)
        out = torch.cat([v.detach().double().reshape(-1), div.detach()])
        return out.cpu().numpy()

    y0 = np.concatenate([x0.detach().double().cpu().numpy().reshape(-1), np.zeros(batch)])
    # imported here: scipy.integrate takes about 0.4 s to load, which every `difflab`
    # command (even --help) paid for two samplers that need it
    from scipy.integrate import solve_ivp

    sol = solve_ivp(rhs, (t0, t1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"likelihood ODE solver failed: {sol.message}")
    y = torch.tensor(sol.y[:, -1], dtype=torch.float64)
    x_end, delta = y[:-batch].reshape(shape), y[-batch:]
    if prior_log_prob is None:
        a, s = process.alpha(torch.tensor(t1)), process.sigma(torch.tensor(t1))
        prior = gaussian_log_prob(x_end, float(torch.sqrt(a**2 + s**2)))  # prior_std at t_max
    else:
        prior = torch.as_tensor(prior_log_prob(x_end.to(device)), dtype=torch.float64).cpu()
    return (prior + delta).to(device)


def bits_per_dim(log_prob: Tensor, dim: int, data_scale: float | None = 127.5) -> Tensor:
    """Convert a continuous log-density (nats per sample) to discrete bits per dimension.

    8-bit pixels k in {0..255} mapped to x = k / 127.5 - 1 lie 1 / data_scale apart in x
    (data_scale = 127.5). Uniform dequantization (x + u / data_scale, u ~ U[0, 1)) makes
    log P(k) >= log p(x) - D log(data_scale): the bin volume is data_scale^-D, which folds in
    both the 256-level discretization and the [0, 255] -> [-1, 1] scaling Jacobian. So

        bpd = (-log p(x) + D log(data_scale)) / (D ln 2).

    Song et al.'s code maps (k + u) / 256 to [-1, 1], bins 1/128 wide: data_scale = 128 gives
    their "+ 7 bits" offset. data_scale=None gives the continuous density in bits per dim.
    """
    if data_scale is not None and not data_scale > 0:
        raise ValueError(f"data_scale must be positive or None, got {data_scale!r}")
    nll = -log_prob.double()
    if data_scale is not None:
        nll = nll + dim * math.log(data_scale)
    return nll / (dim * math.log(2))


def ode_bits_per_dim(
    denoiser: Denoiser, x0: Tensor, *, data_scale: float | None = 127.5, **kwargs
) -> Tensor:
    """Bits per dimension of x0 (B,) under the probability-flow ODE model; see bits_per_dim.

    x0 should be dequantized data (`uniform_dequantize`); kwargs go to ode_log_likelihood.
    """
    log_p = ode_log_likelihood(denoiser, x0, **kwargs)
    return bits_per_dim(log_p, x0[0].numel(), data_scale)


def uniform_dequantize(
    x: Tensor, data_scale: float = 127.5, generator: torch.Generator | None = None
) -> Tensor:
    """x + u / data_scale with u ~ U[0, 1): spread each 8-bit level over its bin."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + u / data_scale
