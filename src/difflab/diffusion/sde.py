"""The score-based SDE view of any noise process: score, reverse-time SDE, probability-flow ODE.

Every `NoiseProcess` x_t = alpha(t) x_0 + sigma(t) eps is the marginal of a linear forward SDE

    dx = f(t) x dt + g(t) dw,    f = d log alpha / dt,    g^2 = d sigma^2 / dt - 2 f sigma^2

(`process.sde_coefficients`). Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", run it backwards with the score grad_x log p_t(x):

- reverse-time SDE (eq. 6; Anderson 1982):  dx = [f x - g^2 score(x, t)] dt + g dw_bar,
  integrated from t_max down to t_min, with dw_bar a Brownian motion in reverse time;
- probability-flow ODE (eq. 13):            dx/dt = f x - 1/2 g^2 score(x, t),
  deterministic, with the same marginals p_t as the SDE.

The score comes from the denoiser's noise prediction: x_t = alpha x_0 + sigma eps gives
score = -eps / sigma (Vincent 2011; Song et al. 2021, app. C), so any network in any
parameterization drives these samplers through `difflab.diffusion.denoiser`.

The two SDEs of the reference texts, both available as processes:

- VE, the score-based write-up's SDE (Song et al.'s tutorial): dx = sigma^t dw on t in [0, 1],
  sigma = 25. Here f = 0, g(t) = sigma^t, and x_t | x_0 ~ N(x_0, s(t)^2 I) with marginal std
  s(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)) (`VEProcess(sigma=25)`; the tutorial's
  `marginal_prob_std` and `diffusion_coeff` are below).
- VP (Song et al. 2021, eq. 11; the continuous limit of DDPM): dx = -1/2 beta(t) x dt +
  sqrt(beta(t)) dw with beta(t) = b0 + t (b1 - b0), b0 = 0.1, b1 = 20, so f = -beta / 2,
  g^2 = beta and alpha^2 + sigma^2 = 1 (`VPProcess("linear")`).

A `DiscreteProcess` (t = step index) has the same f, g^2 per unit of step index, from the
interpolated log alpha_bar, so the same helpers serve DDPM tables.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Denoiser, Prediction
from difflab.diffusion.process import NoiseProcess, as_time, expand_like

Tensor = torch.Tensor


def sde_terms(process: NoiseProcess, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """(f(t), g(t)^2) of the forward SDE, shaped to broadcast against x (B, ...).

    t is a scalar (one time for the batch, computed once) or one time per sample (B,).
    """
    f, g2 = process.sde_coefficients(as_time(t, device=x.device))
    return expand_like(f, x), expand_like(g2, x)


def score_from_prediction(
    process: NoiseProcess, x: Tensor, t: Tensor | float, pred: Prediction
) -> Tensor:
    """grad_x log p_t(x) = -eps / sigma(t) from a denoiser's prediction at (x, t)."""
    sigma = expand_like(process.sigma(as_time(t, device=x.device)), x)
    return -pred.eps / sigma


def score(
    denoiser: Denoiser, x: Tensor, t: Tensor | float, pred: Prediction | None = None
) -> Tensor:
    """The score grad_x log p_t(x) = -eps / sigma; pass `pred` to reuse an evaluation."""
    if pred is None:
        pred = denoiser(x, as_time(t, x.shape[0], x.device))
    return score_from_prediction(denoiser.process, x, t, pred)


def reverse_drift(
    denoiser: Denoiser, x: Tensor, t: Tensor | float, pred: Prediction | None = None
) -> Tensor:
    """Drift of the reverse-time SDE, f x - g^2 score (Song et al. 2021, eq. 6; Anderson 1982).

    The diffusion coefficient of the reverse SDE is the forward one, g(t).
    """
    f, g2 = sde_terms(denoiser.process, x, t)
    return f * x - g2 * score(denoiser, x, t, pred)


def probability_flow_drift(
    denoiser: Denoiser, x: Tensor, t: Tensor | float, pred: Prediction | None = None
) -> Tensor:
    """Velocity of the probability-flow ODE (Song et al. 2021, eq. 13): f x - 1/2 g^2 score."""
    f, g2 = sde_terms(denoiser.process, x, t)
    return f * x - 0.5 * g2 * score(denoiser, x, t, pred)


# ----------------------------------------------------------------------------- the VE write-up


def marginal_prob_std(t: Tensor | float, sigma: float = 25.0) -> Tensor:
    """Std of x_t | x_0 under dx = sigma^t dw: sqrt((sigma^(2t) - 1) / (2 ln sigma)).

    From Var = int_0^t sigma^(2s) ds; the name is the score-based write-up's.
    """
    t = as_time(t)
    return torch.sqrt(torch.expm1(2 * t * math.log(sigma)) / (2 * math.log(sigma)))


def diffusion_coeff(t: Tensor | float, sigma: float = 25.0) -> Tensor:
    """g(t) = sigma^t of the write-up's VE SDE dx = sigma^t dw."""
    return torch.as_tensor(sigma, dtype=torch.float64) ** as_time(t)
