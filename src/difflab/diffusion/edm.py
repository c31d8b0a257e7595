"""EDM: the design of Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
Generative Models", as a process, a preconditioned denoiser and a training objective.

- Process (sec. 2 and Table 1, "Sampling"): sigma(t) = t and s(t) = 1, so x = x0 + sigma n and
  the time *is* the noise level, t in [sigma_min, sigma_max] = [0.002, 80]. In difflab's terms
  alpha = 1 and sigma = t: a VE process whose Karras grid (eq. 5) is EDM's sampling grid and
  whose probability-flow ODE is eq. 3, dx / dsigma = (x - D(x; sigma)) / sigma. EDM's own
  samplers are `sample_heun` in difflab.samplers.karras: Algorithm 1 (deterministic Heun), and
  Algorithm 2 with s_churn, s_tmin, s_tmax, s_noise (the stochastic sampler). Sample on the
  "karras" spacing (every grid-based sampler accepts it): a "uniform" grid in t = sigma puts
  almost no points at low noise. The prior is difflab's VE one, N(0, (1 + sigma_max^2) I);
  Algorithm 1 draws N(0, sigma_max^2 I), a difference of 1e-4 in std at sigma_max = 80.
- Preconditioning (sec. 5, eq. 7 and Table 1): the network F is wrapped as
      D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
  with c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data /
  sqrt(sigma^2 + sigma_data^2), c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4.
  The network's input and its training target then have unit variance at every sigma for data
  of std sigma_data. `EDMDenoiser` applies this to the VE view x / alpha, sigma_ve = sigma /
  alpha of *any* process (Karras et al.'s point: every process is a VE process in disguise),
  so the same network wrapper serves the EDM process and, e.g., a VP one.
- Training (sec. 5, Table 1, "Training"): ln(sigma) ~ N(P_mean, P_std^2) with P_mean = -1.2,
  P_std = 1.2, and loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
  on ||D - x0||^2 (eq. 8). Since lambda c_out^2 = 1, that is the plain MSE of F against its
  target (x0 - c_skip x) / c_out (eq. 8 rewritten), which is how it is computed here: no
  1 / sigma^2 blow-up at small sigma. At the optimum for data N(mu, s^2 I) the loss per dimension
  is s^2 (sigma^2 + sigma_data^2) / (sigma_data^2 (s^2 + sigma^2)): exactly 1 when s = sigma_data.
"""

from __future__ import annotations

import math

import torch

from difflab.diffusion.denoiser import Prediction
from difflab.diffusion.noise import randn
from difflab.diffusion.process import NoiseProcess, as_time, cosine_equivalent_time, expand_like

Tensor = torch.Tensor

SIGMA_DATA = 0.5  # Karras et al.'s sigma_data for data in [-1, 1]


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: float) -> float:
    if not (_number(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def edm_preconditioning(
    sigma: Tensor, sigma_data: float = SIGMA_DATA
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) at noise level sigma, float64 (Karras et al., Table 1)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / torch.sqrt(var)
    c_in = 1 / torch.sqrt(var)
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1): 1 / c_out^2."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMDenoiser:
    """A network F trained with EDM preconditioning, as a difflab `Denoiser` on any process.

    At (x, t) it works on the VE view x_ve = x / alpha(t), sigma = sigma_ve(t), calls
    net(c_in x_ve, c_noise, cond) and returns x0 = c_skip x_ve + c_out F and the matching
    eps = (x_ve - x0) / sigma. Both are affine in F, so classifier-free guidance on the
    Prediction is guidance on F. The net sees c_noise in x's dtype (float32 when sampling).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        process: NoiseProcess,
        cond=None,
        sigma_data: float | None = None,
    ):
        if sigma_data is None:
            sigma_data = getattr(process, "sigma_data", SIGMA_DATA)
        self.net, self.process, self.cond = net, process, cond
        self.sigma_data = _positive("sigma_data", sigma_data)

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        sigma = self.process.sigma_ve(t)
        x_ve = x / expand_like(self.process.alpha(t), x)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        out = self.net(expand_like(c_in, x) * x_ve, c_noise.to(x.dtype), self.cond).to(x.dtype)
        x0 = expand_like(c_skip, x) * x_ve + expand_like(c_out, x) * out
        return Prediction(x0, (x_ve - x0) / expand_like(sigma, x))


class EDMProcess(NoiseProcess):
    """Karras et al.'s process x = x0 + t n, t = sigma in [sigma_min, sigma_max], with EDM's
    training noise distribution (`sample_t`) and objective (`training_loss`)."""

    variance_preserving = False

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = SIGMA_DATA,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ):
        self.t_min = _positive("EDM sigma_min", sigma_min)
        self.t_max = _positive("EDM sigma_max", sigma_max)
        if not self.t_min < self.t_max:
            raise ValueError(f"EDM needs sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_data = _positive("EDM sigma_data", sigma_data)
        self.p_std = _positive("EDM P_std", p_std)
        if not _number(p_mean):
            raise ValueError(f"EDM P_mean must be a finite number, got {p_mean!r}")
        self.p_mean = float(p_mean)

    # ---------------------------------------------------------------- the NoiseProcess contract
    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(as_time(t))

    def sigma(self, t: Tensor) -> Tensor:
        return as_time(t).clone()

    def sigma_ve(self, t: Tensor) -> Tensor:
        return self.sigma(t)  # alpha = 1: exactly t, not exp(-log_snr / 2)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-0.5 * torch.as_tensor(lam, dtype=torch.float64))

    def img2img_time(self, strength: float) -> float:
        return cosine_equivalent_time(self, strength)  # t = sigma, up to 80: not a fraction

    def sde_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = 0 and g^2 = d sigma^2 / dt = 2 t: a VE process with sigma(t) = t."""
        t = as_time(t)
        return torch.zeros_like(t), 2 * t

    # ---------------------------------------------------------------- training
    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (Table 1), float64, not clipped
        to [sigma_min, sigma_max] (the paper's distribution; its tails train harmlessly)."""
        z = torch.randn(batch, generator=generator, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * z).to(device)

    def denoiser(self, net: torch.nn.Module, cond=None) -> EDMDenoiser:
        """The sampling-time Denoiser for a network trained with `training_loss`."""
        return EDMDenoiser(net, self, cond, self.sigma_data)

    def loss_at(
        self, net: torch.nn.Module, x0: Tensor, sigma: Tensor, noise: Tensor, cond=None
    ) -> Tensor:
        """Per-sample EDM loss (B,) at given noise levels and noise: lambda(sigma) ||D - x0||^2
        averaged over dimensions, computed as ||F - (x0 - c_skip x) / c_out||^2 (eq. 8)."""
        dtype = torch.promote_types(x0.dtype, torch.float32)
        sigma = as_time(sigma, x0.shape[0], x0.device)
        x = x0 + expand_like(sigma, x0) * noise.to(x0.dtype)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        out = net(expand_like(c_in, x) * x, c_noise.to(x0.dtype), cond).to(dtype)
        target = ((x0 - expand_like(c_skip, x) * x) / expand_like(c_out, x)).to(dtype)
        return ((out - target) ** 2).flatten(1).mean(1)

    def training_loss(
        self,
        net: torch.nn.Module,
        x0: Tensor,
        cond=None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample EDM training loss (B,): sigma from `sample_t`, then the noise, both drawn
        from `generator` in that order; see `loss_at`."""
        sigma = self.sample_t(x0.shape[0], generator, x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        return self.loss_at(net, x0, sigma, noise, cond)
