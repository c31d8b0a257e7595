"""The Gaussian noise process x_t = alpha(t) x_0 + sigma(t) eps, in discrete and continuous time.

Every process in difflab is described by two functions, alpha(t) and sigma(t) (Kingma et al.
2021, "Variational Diffusion Models", sec. 2). Samplers only ever ask a process for these,
for their ratio (the log signal-to-noise ratio lambda(t) = log(alpha^2 / sigma^2)) and for its
inverse, so one sampler serves DDPM tables, VP and VE SDEs alike.

- `DiscreteProcess`: a table of T betas (Ho et al. 2020). t is the 0-based step index
  0..T-1 (step 0 is the first noising step, the paper's t = 1). Fractional t interpolates
  log alpha_bar linearly, which fast solvers need between table entries.
- `VPProcess`: continuous t in [t_min, 1], alpha^2 + sigma^2 = 1 (Song et al. 2021).
- `VEProcess`: continuous t in [t_min, 1], alpha = 1, sigma(t) the marginal std of
  dx = sigma^t dw (the score-based write-up's SDE).

The SDE view dx = f(t) x dt + g(t) dw of any such process has f(t) = d log alpha / dt and
g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2 (Kingma et al. 2021, appendix A; Song et al. 2021).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from difflab.diffusion import schedules

Tensor = torch.Tensor


def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient (B,) or scalar so it broadcasts against x (B, ...)."""
    coef = coef.to(x.dtype) if coef.is_floating_point() else coef
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def as_time(t: Tensor | float, batch: int | None = None, device=None) -> Tensor:
    """Turn a scalar or tensor time into a float64 tensor of shape (batch,) or ()."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if batch is not None and t.ndim == 0:
        t = t.expand(batch)
    return t


class NoiseProcess(ABC):
    """x_t = alpha(t) x_0 + sigma(t) eps; subclasses give log alpha(t) and sigma(t)."""

    discrete: bool = False
    t_min: float = 0.0
    t_max: float = 1.0
    variance_preserving: bool = True

    # ---------------------------------------------------------------- what subclasses define
    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t), float64."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t), float64."""

    @abstractmethod
    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of log_snr: the time whose log(alpha^2 / sigma^2) is lam."""

    # ---------------------------------------------------------------- derived quantities
    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(as_time(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), strictly decreasing in t."""
        t = as_time(t)
        return 2 * (self.log_alpha(t) - torch.log(self.sigma(t)))

    def sigma_ve(self, t: Tensor) -> Tensor:
        """sigma / alpha: the noise level of the equivalent VE process x / alpha (Karras et al.)."""
        return torch.exp(-0.5 * self.log_snr(t))

    def t_from_sigma_ve(self, sigma_ve: Tensor) -> Tensor:
        return self.t_from_log_snr(-2 * torch.log(torch.as_tensor(sigma_ve, dtype=torch.float64)))

    def sde_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(f(t), g(t)^2) of the forward SDE dx = f x dt + g dw, by autograd on alpha, sigma.

        f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, app. A).
        """
        t = as_time(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            log_a = self.log_alpha(t)
            var = self.sigma(t) ** 2
            f = torch.autograd.grad(log_a.sum(), t, retain_graph=True)[0]
            dvar = torch.autograd.grad(var.sum(), t)[0]
        return f.detach(), (dvar - 2 * f * var).detach()

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) in closed form (Ho et al. 2020, eq. 4): alpha x0 + sigma eps."""
        t = as_time(t, x0.shape[0], x0.device)
        return expand_like(self.alpha(t), x0) * x0 + expand_like(self.sigma(t), x0) * noise

    def prior_std(self) -> float:
        """Std of the Gaussian the reverse process starts from at t_max."""
        if self.variance_preserving:
            return 1.0
        t = torch.tensor(self.t_max, dtype=torch.float64)
        return float(torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training times: uniform over steps (discrete) or over [t_min, t_max] (continuous)."""
        if self.discrete:
            return torch.randint(0, self.T, (batch,), generator=generator, device=device).double()
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    # ---------------------------------------------------------------- parameterizations
    # v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4), written without assuming
    # alpha^2 + sigma^2 = 1 so that it also holds for VE processes.
    def coefficients(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        t = as_time(t, x.shape[0], x.device)
        return expand_like(self.alpha(t), x), expand_like(self.sigma(t), x)

    def x0_from_eps(self, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, s = self.coefficients(t, x)
        return (x - s * eps) / a

    def eps_from_x0(self, x: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        a, s = self.coefficients(t, x)
        return (x - a * x0) / s

    def v_target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, s = self.coefficients(t, x0)
        return a * eps - s * x0

    def x0_eps_from_v(self, x: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.coefficients(t, x)
        norm = a * a + s * s
        return (a * x - s * v) / norm, (s * x + a * v) / norm

    # ---------------------------------------------------------------- posterior
    def posterior(self, x_t: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x_0) for any s < t (Kingma et al. 2021, eq. 26-28).

        With alpha_{t|s} = alpha_t / alpha_s and
        sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2:
        mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x_0,
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2. For consecutive DDPM steps this is
        Ho et al.'s eq. 6-7 (mean mu~_t, variance beta~_t).
        """
        a_t, s_t = self.coefficients(t, x_t)
        a_s, s_s = self.coefficients(s, x_t)
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        mean = (a_ts * s_s**2 / s_t**2) * x_t + (a_s * var_ts / s_t**2) * x0
        return mean, var_ts * s_s**2 / s_t**2

    def img2img_time(self, strength: float) -> float:
        """Where img2img starts at `strength` in [0, 1]: that fraction of the way from t_min
        to t_max. For the processes whose time is a fraction of a fixed noising path (DDPM's
        steps, VP, flow) this is how diffusers reads strength; processes whose time is an
        unbounded noise level (VE, EDM) override it with :func:`cosine_equivalent_time`."""
        return self.t_min + strength * (self.t_max - self.t_min)

    def transition_variance(self, t: Tensor, s: Tensor) -> Tensor:
        """sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 beta_t for steps t, t-1."""
        t, s = as_time(t), as_time(s)
        a_ts = torch.exp(self.log_alpha(t) - self.log_alpha(s))
        return self.sigma(t) ** 2 - a_ts**2 * self.sigma(s) ** 2


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation (numpy.interp) for increasing xp, clamped at the ends."""
    x = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x_lo, x_hi = xp[idx - 1], xp[idx]
    w = (x - x_lo) / (x_hi - x_lo)
    return fp[idx - 1] + w * (fp[idx] - fp[idx - 1])


class DiscreteProcess(NoiseProcess):
    """DDPM's discrete forward process defined by a beta table (Ho et al. 2020)."""

    discrete = True

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        self.betas = betas
        self.T = len(betas)
        self.t_min, self.t_max = 0.0, float(self.T - 1)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        # log alpha_bar; a zero-terminal-SNR table has alpha_bar_T = 0, kept finite here.
        self._log_ab = torch.log(self.alphas_cumprod.clamp(min=1e-40))
        self._steps = torch.arange(self.T, dtype=torch.float64)

    @classmethod
    def from_schedule(cls, name: str, T: int = 1000, **kwargs) -> DiscreteProcess:
        return cls(schedules.make_betas(name, T, **kwargs))

    def _table(self, t: Tensor, table: Tensor) -> Tensor:
        t = as_time(t)
        tc = t.cpu()
        whole = not tc.requires_grad and bool((tc == tc.round()).all())
        if whole and bool(((tc >= 0) & (tc < self.T)).all()):
            return table[tc.long()].to(t.device)  # whole steps: a lookup, the common case
        return _interp(tc, self._steps, table).to(t.device)

    def log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * self._table(t, self._log_ab)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        # log alpha_bar = log sigmoid(lambda); invert the same interpolation log_alpha uses.
        log_ab = torch.nn.functional.logsigmoid(lam)
        return _interp(-log_ab.cpu(), -self._log_ab, self._steps).to(lam.device)


class VPProcess(NoiseProcess):
    """Continuous variance-preserving process (VP SDE, Song et al. 2021, eq. 11)."""

    def __init__(
        self,
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r}; allowed: linear, cosine")
        self.schedule, self.beta_min, self.beta_max = schedule, beta_min, beta_max
        self.t_min, self.t_max = t_min, 1.0

    def log_alpha(self, t: Tensor) -> Tensor:
        t = as_time(t)
        if self.schedule == "linear":
            return schedules.vp_linear_log_alpha(t, self.beta_min, self.beta_max)
        return schedules.vp_cosine_log_alpha(t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        log_a2 = -torch.nn.functional.softplus(-lam)  # log alpha^2 = -log(1 + e^-lam)
        if self.schedule == "linear":
            # Solve 0.5 (b1 - b0) t^2 + b0 t + log alpha^2 = 0 for t >= 0.
            a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
            return 2 * (-log_a2) / (b + torch.sqrt(b * b - 4 * a * log_a2))
        s = 0.008
        f0 = math.cos(s / (1 + s) * math.pi / 2)
        return torch.acos((torch.exp(0.5 * log_a2) * f0).clamp(-1, 1)) * 2 / math.pi * (1 + s) - s


class VEProcess(NoiseProcess):
    """Variance-exploding process of dx = sigma^t dw (Song et al. 2021; the score write-up)."""

    variance_preserving = False

    def __init__(self, sigma: float = 25.0, t_min: float = 1e-5):
        if sigma <= 1:
            raise ValueError(f"VE sigma must be > 1, got {sigma}")
        self.sigma_base, self.t_min, self.t_max = float(sigma), t_min, 1.0

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(as_time(t))

    def sigma(self, t: Tensor) -> Tensor:
        return schedules.ve_marginal_std(as_time(t), self.sigma_base)

    def sde_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = as_time(t)
        return torch.zeros_like(t), self.sigma_base ** (2 * t)  # g(t) = sigma^t

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        var = torch.exp(-torch.as_tensor(lam, dtype=torch.float64))  # sigma(t)^2
        return torch.log1p(2 * math.log(self.sigma_base) * var) / (2 * math.log(self.sigma_base))

    def img2img_time(self, strength: float) -> float:
        return cosine_equivalent_time(self, strength)  # t is a noise level here


def cosine_equivalent_time(process: NoiseProcess, strength: float) -> float:
    """The time at which `process` is as noisy as the cosine schedule is after `strength` of
    its steps: sigma/alpha = tan(pi/2 (s + 0.008) / 1.008) (Nichol & Dhariwal 2021, eq. 17,
    whose alpha_bar = cos^2 of that angle), clamped to [t_min, t_max].

    Why: for VE and EDM time is the noise level itself (t = sigma up to 80 for EDM), and
    strength taken linearly in it would put 0.5 at sigma 40, which leaves nothing of a [-1, 1]
    image; read through the cosine schedule, a strength destroys as much of the image as it
    does in the default DDPM preset (0.5: sigma/alpha = 1.01; 0.9: 6.4)."""
    angle = math.pi / 2 * (min(max(strength, 0.0), 1.0) + 0.008) / 1.008
    noise_to_signal = max(math.tan(angle), 1e-30)
    lam = torch.tensor(-2.0 * math.log(noise_to_signal), dtype=torch.float64)
    t = float(process.t_from_log_snr(lam))
    return min(max(t, process.t_min), process.t_max)


PROCESSES = ("discrete", "vp", "ve")


def make_process(kind: str = "discrete", **kwargs) -> NoiseProcess:
    """Build a process by name: 'discrete' (schedule=, T=), 'vp' (schedule=), 've' (sigma=)."""
    if kind == "discrete":
        return DiscreteProcess.from_schedule(kwargs.pop("schedule", "linear"), **kwargs)
    if kind == "vp":
        return VPProcess(**kwargs)
    if kind == "ve":
        return VEProcess(**kwargs)
    raise ValueError(f"unknown process {kind!r}; allowed: {', '.join(PROCESSES)}")
