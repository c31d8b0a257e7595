"""Flow matching / rectified flow: x_t = (1 - t) x0 + t eps, a network trained on v = eps - x0.

- Liu et al. (2023), "Flow Straight and Fast: Learning to Generate and Transfer Data with
  Rectified Flow", eq. 1: the straight path between data and noise, regressed on its constant
  velocity. Lipman et al. (2023), "Flow Matching for Generative Modeling", sec. 4.1: the same
  path is the conditional optimal-transport path with sigma_min = 0 (their time runs from noise
  at 0 to data at 1; difflab's, like Stable Diffusion 3's, from data at 0 to noise at 1).
- Esser et al. (2024), "Scaling Rectified Flow Transformers for High-Resolution Image
  Synthesis" (Stable Diffusion 3), sec. 3.1: training times from the logit-normal density
  pi_ln(t; m, s), i.e. logit(t) ~ N(m, s^2), which spends more of training at mid-noise;
  m = 0, s = 1 is their best setting. Liu et al. draw t uniformly.

In difflab's terms the process is alpha(t) = 1 - t, sigma(t) = t, log-SNR 2 log((1 - t) / t),
so every sampler, guidance and the likelihood code run on it. A velocity v converts to the
Denoiser contract with x0 = x - t v, eps = x + (1 - t) v (`FlowDenoiser`), both affine in v.

The probability-flow ODE of any process x = alpha x0 + sigma eps, written with the denoiser's
predictions, is dx/dt = alpha'(t) x0 + sigma'(t) eps (Song et al. 2021, eq. 13 with
f = alpha' / alpha, g^2 = 2 sigma sigma' - 2 f sigma^2 and score = -eps / sigma). For this
process that is eps - x0 = v: the network predicts the ODE's velocity itself, and Euler in t
is DDIM (x_s = (1 - s) x0 + s eps for consistent predictions).

Times: t_min = 1e-3 and t_max = 1 - 1e-3 by default. At t = 1, alpha = 0: the samplers that
divide by alpha or use the log-SNR (Karras, DPM-Solver, DEIS, PLMS) and the SDE's drift
f = -1 / (1 - t) are infinite there. x at t_max = 0.999 is noise to within 0.1 % of x0 (VP's
alpha(1) is 0.0066). Sampling ends at t_min and returns x0 = x - t_min v, which is the Euler
step to t = 0, so stopping there costs nothing.

Optimal velocity for Gaussian data x0 ~ N(mu, s^2 I): with a = 1 - t, Var x_t = a^2 s^2 + t^2,
E[v | x_t] = (t - a s^2) / (a^2 s^2 + t^2) (x_t - a mu) - mu, affine in x_t, and the training
loss there is the conditional variance s^2 / (a^2 s^2 + t^2) per dimension (tests/test_flow.py).
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Prediction
from difflab.diffusion.noise import randn
from difflab.diffusion.process import NoiseProcess, as_time, expand_like

Tensor = torch.Tensor

TIME_SAMPLINGS = ("logit_normal", "uniform")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def probability_flow_velocity(
    process: NoiseProcess, x: Tensor, t: Tensor | float, pred: Prediction
) -> Tensor:
    """dx/dt of the probability-flow ODE, alpha'(t) x0 + sigma'(t) eps, for any process.

    alpha' = f alpha and sigma' = (g^2 + 2 f sigma^2) / (2 sigma) from the process' forward-SDE
    coefficients (f, g^2); t is a scalar or one time per sample. Equal to
    difflab.diffusion.sde.probability_flow_drift, but without its f x - g^2 / 2 score
    cancellation where alpha is small.
    """
    t = as_time(t, device=x.device)
    f, g2 = process.sde_coefficients(t)
    alpha, sigma = process.alpha(t), process.sigma(t)
    d_alpha = f * alpha
    d_sigma = (g2 + 2 * f * sigma**2) / (2 * sigma)
    return expand_like(d_alpha, x) * pred.x0 + expand_like(d_sigma, x) * pred.eps


class FlowDenoiser:
    """A velocity network v(x_t, t, cond) on a `FlowProcess`, as a difflab `Denoiser`:
    x0 = x - t v and eps = x + (1 - t) v. The net sees t in [0, 1] in x's dtype."""

    def __init__(self, net: torch.nn.Module, process: FlowProcess, cond=None):
        if not isinstance(process, FlowProcess):
            raise ValueError(
                f"a velocity network needs a FlowProcess (x_t = (1 - t) x0 + t eps), "
                f"got {type(process).__name__}"
            )
        self.net, self.process, self.cond = net, process, cond

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        v = self.net(x, t.to(x.dtype), self.cond).to(x.dtype)
        tt = expand_like(t, x)
        return Prediction(x - tt * v, x + (1 - tt) * v)


class FlowProcess(NoiseProcess):
    """Rectified flow x_t = (1 - t) x0 + t eps on t in [t_min, t_max], with its training time
    distribution (`sample_t`) and velocity objective (`training_loss`)."""

    variance_preserving = False

    def __init__(
        self,
        t_min: float = 1e-3,
        t_max: float = 1 - 1e-3,
        time_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        for name, value in (("t_min", t_min), ("t_max", t_max)):
            if not _number(value):
                raise ValueError(f"flow {name} must be a number, got {value!r}")
        if not 0 < t_min < t_max < 1:
            raise ValueError(f"flow times need 0 < t_min < t_max < 1, got {t_min} and {t_max}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"unknown flow time sampling {time_sampling!r}; "
                f"allowed: {', '.join(TIME_SAMPLINGS)}"
            )
        if not _number(logit_mean):
            raise ValueError(f"flow logit_mean must be a finite number, got {logit_mean!r}")
        if not (_number(logit_std) and logit_std > 0):
            raise ValueError(f"flow logit_std must be a positive finite number, got {logit_std!r}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.time_sampling = time_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    # ---------------------------------------------------------------- the NoiseProcess contract
    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-as_time(t))

    def sigma(self, t: Tensor) -> Tensor:
        return as_time(t).clone()

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # (1 - t) / t = exp(lam / 2)  =>  t = sigmoid(-lam / 2)
        return torch.sigmoid(-0.5 * torch.as_tensor(lam, dtype=torch.float64))

    def sde_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = d log(1 - t) / dt = -1 / (1 - t), g^2 = d t^2 / dt - 2 f t^2 = 2 t / (1 - t)."""
        t = as_time(t)
        return -1 / (1 - t), 2 * t / (1 - t)

    # ---------------------------------------------------------------- training
    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training times in (0, 1), float64: logit-normal, t = sigmoid(m + s z) (Esser et al.
        2024, sec. 3.1), or uniform (Liu et al. 2023). Not clipped to [t_min, t_max]: the
        velocity target needs no division, so the whole path trains."""
        if self.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, dtype=torch.float64)
        else:
            z = torch.randn(batch, generator=generator, dtype=torch.float64)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return t.to(device)

    def denoiser(self, net: torch.nn.Module, cond=None) -> FlowDenoiser:
        """The sampling-time Denoiser for a network trained with `training_loss`."""
        return FlowDenoiser(net, self, cond)

    def loss_at(
        self, net: torch.nn.Module, x0: Tensor, t: Tensor, noise: Tensor, cond=None
    ) -> Tensor:
        """Per-sample flow-matching loss (B,): ||v(x_t, t) - (eps - x0)||^2 averaged over
        dimensions (Liu et al. 2023, eq. 1; Lipman et al. 2023's conditional flow matching)."""
        dtype = torch.promote_types(x0.dtype, torch.float32)
        t = as_time(t, x0.shape[0], x0.device)
        tt, noise = expand_like(t, x0), noise.to(x0.dtype)
        x_t = (1 - tt) * x0 + tt * noise
        out = net(x_t, t.to(x0.dtype), cond).to(dtype)
        return ((out - (noise - x0).to(dtype)) ** 2).flatten(1).mean(1)

    def training_loss(
        self,
        net: torch.nn.Module,
        x0: Tensor,
        cond=None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample training loss (B,): t from `sample_t`, then the noise, both drawn from
        `generator` in that order; see `loss_at`."""
        t = self.sample_t(x0.shape[0], generator, x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        return self.loss_at(net, x0, t, noise, cond)
