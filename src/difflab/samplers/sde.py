"""Stochastic samplers for the reverse-time SDE: Euler–Maruyama and predictor–corrector.

Both integrate dx = [f x - g^2 score(x, t)] dt + g dw_bar from timesteps[0] down to
timesteps[-1] (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 6) for any
`NoiseProcess`, with f, g^2 from `process.sde_coefficients` and score = -eps / sigma. After the
last time they return the denoiser's x0 prediction there, the "denoise at the end" step of
Song et al.'s code (Tweedie's formula, which removes the noise left at t_min).

Randomness comes only from `generator`; with one generator per sample, every sample draws its
own noise and each step uses only its own values, so the result does not depend on the batch.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.noise import GeneratorLike, randn_like
from difflab.diffusion.process import as_time, expand_like
from difflab.diffusion.sde import score_from_prediction, sde_terms
from difflab.samplers.common import Callback, check_timesteps, emit

Tensor = torch.Tensor

PREDICTORS = ("euler_maruyama", "reverse_diffusion")
STEP_RULES = ("expected", "per_sample")


@torch.no_grad()
def sample_euler_maruyama(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6, sec. 4.1 and their
    code's `EulerMaruyamaPredictor`; the sampler of the score-based write-up).

    With dt_i = t_i - t_{i+1} > 0 and z ~ N(0, I):
        x <- x - [f x - g^2 score(x, t_i)] dt_i + g(t_i) sqrt(dt_i) z.
    """
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    total = len(ts) - 1
    for i in range(total):
        t, dt = ts[i], float(ts[i] - ts[i + 1])
        pred = denoiser(x, as_time(t, x.shape[0], x.device))
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=total)
        f, g2 = sde_terms(process, x, t)
        drift = f * x - g2 * score_from_prediction(process, x, t, pred)
        # Euler–Maruyama, time running backwards: x_{t - dt} = x_t - drift dt + g sqrt(dt) z
        x = x - drift * dt + torch.sqrt(g2 * dt) * randn_like(x, generator)
    return denoiser(x, as_time(ts[-1], x.shape[0], x.device)).x0


@torch.no_grad()
def sample_pc(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    predictor: str = "euler_maruyama",
    step_rule: str = "expected",
) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1; Algorithms 2-5 for VE / VP).

    Each step moves t_i -> t_{i+1} with a predictor, then runs `corrector_steps` Langevin MCMC
    steps at t_{i+1} (the paper's order; Song et al.'s code runs the corrector first).

    Predictors:
    - "euler_maruyama": one Euler–Maruyama step of the reverse SDE (see sample_euler_maruyama).
    - "reverse_diffusion" (app. E, the reverse diffusion sampler): reverse the discretized
      forward step x_i = a x_{i+1} + sqrt(v) z, with a = alpha(t_i) / alpha(t_{i+1}) and
      v = sigma_{t_i|t_{i+1}}^2 (DDPM's beta_i for VP, sigma_i^2 - sigma_{i+1}^2 for VE):
      x <- x - (a - 1) x + v score + sqrt(v) z.

    Langevin corrector (Algorithms 4 and 5), z ~ N(0, I), s = score(x, t_{i+1}):
        x <- x + eps s + sqrt(2 eps) z,    eps = 2 a_i (snr ||z|| / ||s||)^2,
    where a_i = (alpha(t_i) / alpha(t_{i+1}))^2 is the 1 - beta_i of Algorithm 5 (VP) over the
    step just taken and is 1 for VE (Algorithm 4), so one rule serves every process. The
    ratio ||z|| / ||s|| is taken in one of two ways:
    - step_rule="per_sample": the algorithms' literal norms, per sample (Song et al.'s code
      averages them over the batch, which would make a sample depend on its batch). Sound for
      images, where both norms concentrate; in low dimension ||z|| / ||s|| is heavy-tailed
      (a sample near a mode has a tiny score) and the occasional huge step inflates the
      spread (D = 8 Gaussian: std +25 %).
    - step_rule="expected" (default): the norms replaced by their expectations,
      E||z||^2 = D and E||s||^2 = D / sigma(t)^2, the Fisher information of the added noise
      and the value of E||s||^2 wherever noise dominates the data (an upper bound on it
      elsewhere: adding noise never raises Fisher information above the noise's, so these
      steps are never larger than the expected norms would give). Then eps = 2 a_i snr^2 sigma(t)^2:
      batch-independent, the same for every sample, and equal to the per-sample rule for
      high-dimensional data.
    snr = 0.16 is the default of Song et al.'s code (their CIFAR-10 VE setting).
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; allowed: {', '.join(PREDICTORS)}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown step_rule {step_rule!r}; allowed: {', '.join(STEP_RULES)}")
    if isinstance(snr, bool) or not isinstance(snr, int | float) or not snr > 0 or snr == math.inf:
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int):
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    process = denoiser.process
    ts = check_timesteps(process, timesteps)
    batch, total = x.shape[0], len(ts) - 1
    for i in range(total):
        t, t_next = ts[i], ts[i + 1]
        pred = denoiser(x, as_time(t, batch, x.device))
        emit(callback, x=x, i=i, t=float(t), denoised=pred.x0, total=total)
        s = score_from_prediction(process, x, t, pred)
        a = float(process.alpha(t) / process.alpha(t_next))  # alpha_{t_i | t_{i+1}}
        if predictor == "euler_maruyama":
            dt = float(t - t_next)
            f, g2 = sde_terms(process, x, t)
            x = x - (f * x - g2 * s) * dt + torch.sqrt(g2 * dt) * randn_like(x, generator)
        else:
            v = float(process.transition_variance(t, t_next))
            # Reverse diffusion (app. E): x_{i+1} = x_i - f_i(x_i) + G_i^2 s + G_i z
            x = x - (a - 1) * x + v * s + math.sqrt(v) * randn_like(x, generator)
        for _ in range(corrector_steps):
            # eps = 2 a_i (snr ...)^2 with a_i = a^2: pass r = snr a
            x = _langevin_step(denoiser, x, t_next, snr * a, step_rule, generator)
    return denoiser(x, as_time(ts[-1], batch, x.device)).x0


def _langevin_step(
    denoiser: Denoiser, x: Tensor, t: Tensor, r: float, step_rule: str, generator: GeneratorLike
) -> Tensor:
    """One Langevin MCMC step at time t, step size 2 (r ||z|| / ||s||)^2 (Algorithms 4, 5)."""
    process = denoiser.process
    pred = denoiser(x, as_time(t, x.shape[0], x.device))
    s = score_from_prediction(process, x, t, pred)
    z = randn_like(x, generator)
    if step_rule == "expected":
        step = 2 * (r * expand_like(process.sigma(as_time(t, device=x.device)), x)) ** 2
    else:
        s_norm, z_norm = s.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1)
        # A zero score carries no information: no move there rather than an infinite step.
        step = torch.where(s_norm > 0, 2 * (r * z_norm / s_norm.clamp_min(1e-30)) ** 2, 0.0)
        step = expand_like(step, x)
    # Langevin dynamics: x <- x + eps score + sqrt(2 eps) z
    return x + step * s + torch.sqrt(2 * step) * z
