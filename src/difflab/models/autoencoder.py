"""A KL-regularised convolutional autoencoder: the first stage of latent diffusion.

References:
- Kingma & Welling (2014), "Auto-Encoding Variational Bayes": a diagonal Gaussian posterior
  q(z|x) = N(mu(x), diag(sigma(x)^2)), sampled by reparameterisation z = mu + sigma * eps,
  and its KL divergence to N(0, I) in closed form, 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2).
- Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
  sec. 3.1 and appendix G: the "KL-f" autoencoders (downsampling factor f, a very small KL
  weight so the latent keeps detail but does not drift to arbitrary scales), and the latent
  scale factor 1 / std(z) measured on data so the diffusion model sees unit-variance latents.

Layout (for the default 28x28x1 -> 7x7x4, f = 4)::

    encoder: conv 1->32 | ResBlock 32, down 28->14 | ResBlock 64, down 14->7 |
             ResBlock 64, ResBlock 64 (middle) | GroupNorm, SiLU, conv -> 2 * 4 (mu, log var)
    decoder: conv 4->64 | ResBlock 64 (middle) | ResBlock 64, up 7->14 | ResBlock 64,
             up 14->28 | ResBlock 32 | GroupNorm, SiLU, conv -> 1

Nothing here knows about diffusion: `encode` gives the posterior, `decode` the image in the
data's [-1, 1] scale. The scale factor lives on the model (a buffer saved with the weights),
`to_latent` / `from_latent` apply it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Downsample, Upsample


@dataclass
class AutoencoderConfig:
    """Settings of :class:`Autoencoder`; validated on creation (ValueError naming the field)."""

    in_channels: int = 1
    # Side of the training images; the latent side is image_size / 2^(len(channels) - 1).
    image_size: int = 28
    # Width per level; each step to the next level halves the side. Three levels give
    # f = 4 (28 -> 7), the factor LDM found the best trade-off of speed and detail.
    channels: tuple[int, ...] = (32, 64, 64)
    # Residual blocks per level, in the encoder and the decoder.
    blocks_per_level: int = 1
    # 4 latent channels as LDM's KL-f4/f8 models: 7x7x4 = 196 numbers for 784 pixels.
    latent_channels: int = 4
    groups: int = 8

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        for name in ("in_channels", "image_size", "blocks_per_level", "latent_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"AutoencoderConfig.{name} must be a positive integer, got {value!r}"
                )
        if not self.channels or any(c < 1 or c % self.groups for c in self.channels):
            raise ValueError(
                f"AutoencoderConfig.channels must be positive multiples of groups={self.groups}, "
                f"got {self.channels}"
            )
        if self.image_size % self.factor:
            raise ValueError(
                f"AutoencoderConfig.image_size {self.image_size} is not divisible by the "
                f"downsampling factor {self.factor} (2^(len(channels) - 1)); allowed sizes "
                f"are multiples of {self.factor}"
            )

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.factor
        return (self.latent_channels, side, side)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown autoencoder setting(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))) of Kingma & Welling (2014)."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        # Clamped as LDM does: an untrained encoder can emit huge log-variances.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw z = mean + std * eps (gradients flow to mean and std)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements: (B,)."""
        var = self.std**2
        return 0.5 * (self.mean**2 + var - 1.0 - self.logvar).flatten(1).sum(dim=1)


class _Block(nn.Module):
    """Pre-activation residual block without a time input: GN, SiLU, conv, GN, SiLU, conv."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(groups, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """Encoder to a diagonal Gaussian over latents, and a decoder back to pixels."""

    def __init__(self, config: AutoencoderConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = AutoencoderConfig(**overrides)
        elif overrides:
            config = AutoencoderConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        ch, g, n = c.channels, c.groups, c.blocks_per_level

        enc: list[nn.Module] = [nn.Conv2d(c.in_channels, ch[0], 3, padding=1)]
        width = ch[0]
        for level, w in enumerate(ch):
            for _ in range(n):
                enc.append(_Block(width, w, g))
                width = w
            if level < len(ch) - 1:
                enc.append(Downsample(width, width))
        enc += [_Block(width, width, g), nn.GroupNorm(g, width), nn.SiLU()]
        enc.append(nn.Conv2d(width, 2 * c.latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(c.latent_channels, ch[-1], 3, padding=1)]
        dec.append(_Block(ch[-1], ch[-1], g))
        width = ch[-1]
        for level, w in reversed(list(enumerate(ch))):
            for _ in range(n):
                dec.append(_Block(width, w, g))
                width = w
            if level > 0:
                dec.append(Upsample(width, width))
        dec += [nn.GroupNorm(g, width), nn.SiLU(), nn.Conv2d(width, c.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        # 1 / std of the latents of the training data (LDM sec. 4.3.2); set from data by
        # `fit_scale` after training, 1.0 until then. Saved with the weights.
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @classmethod
    def from_config(cls, data: dict[str, Any] | AutoencoderConfig) -> Autoencoder:
        config = data if isinstance(data, AutoencoderConfig) else AutoencoderConfig.from_dict(data)
        return cls(config)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def _check_image(self, x: Tensor) -> None:
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"the autoencoder takes images of shape (B, {', '.join(map(str, want))}), got "
                f"{tuple(x.shape)}; resize or convert the images to {want[1]}x{want[2]} with "
                f"{want[0]} channel(s)"
            )

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Images in [-1, 1], (B, C, H, W) -> the posterior over (B, latent_channels, h, w)."""
        self._check_image(x)
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents -> images in (about) [-1, 1]."""
        want = self.latent_shape
        if z.ndim != 4 or tuple(z.shape[1:]) != want:
            raise ValueError(
                f"latents must be (B, {', '.join(map(str, want))}), got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(
        self, x: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction through a posterior sample, and the posterior (for the KL term)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    # ------------------------------------------------------------------ the diffusion side
    def to_latent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images -> scaled latents for the diffusion model (a posterior sample, as LDM)."""
        return self.encode(x).sample(generator) * self.scale_factor

    def from_latent(self, z: Tensor) -> Tensor:
        """Scaled latents from the diffusion model -> images."""
        return self.decode(z / self.scale_factor)

    @torch.no_grad()
    def fit_scale(self, images: Tensor, batch_size: int = 512) -> float:
        """Set scale_factor = 1 / std of posterior samples of `images` (LDM sec. 4.3.2), so
        the diffusion model's data has unit variance like its prior. Returns the factor."""
        gen = torch.Generator().manual_seed(0)
        zs = [
            self.encode(images[i : i + batch_size]).sample(gen).float()
            for i in range(0, len(images), batch_size)
        ]
        std = float(torch.cat(zs).std())
        if not math.isfinite(std) or std <= 0:
            raise ValueError(f"cannot fit the latent scale: latents have std {std}")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std


def autoencoder_loss(
    model: nn.Module,
    x: Tensor,
    *,
    recon: str = "l1",
    kl_weight: float = 1e-4,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Reconstruction (mean over pixels) + kl_weight * KL (mean over latent elements).

    Both terms are per-element means so kl_weight reads the same at any image size. L1
    gives sharper reconstructions than L2 (LDM trains with L1 plus perceptual and GAN
    terms); the KL only keeps the latent near N(0, I) in scale, it is not a VAE's ELBO.
    """
    out, posterior = model(x, generator=generator)
    if recon == "l1":
        rec = F.l1_loss(out.float(), x)
    elif recon == "l2":
        rec = F.mse_loss(out.float(), x)
    else:
        raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {recon!r}")
    kl = posterior.kl().float().mean() / posterior.mean[0].numel()
    return rec + kl_weight * kl, {"recon": float(rec.detach()), "kl": float(kl.detach())}


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
