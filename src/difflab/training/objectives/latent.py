"""Latent diffusion (Rombach et al. 2022): the same denoising objective on the latents of a
frozen autoencoder.

The autoencoder is frozen, so its posterior q(z | x) of a training image never changes: every
image is encoded once, and the mean and std of q(z | x) kept in memory (60,000 Fashion-MNIST
images at 7x7x4 take 94 MB). Each step then draws z = mean + std * eps, as LDM does, for the
cost of one multiply-add instead of an encoder pass, scaled to unit variance (sec. 4.3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from difflab.checkpoints.components import AUTOENCODER, load_autoencoder
from difflab.config import RunConfig
from difflab.data import ImageData
from difflab.diffusion.process import NoiseProcess
from difflab.models.autoencoder import Autoencoder
from difflab.training.objectives.diffusion import DiffusionObjective
from difflab.training.objectives.text import CaptionConditioning

Tensor = torch.Tensor


@dataclass
class EncodedData:
    """A dataset encoded once by a frozen autoencoder."""

    autoencoder: Autoencoder
    moments: Tensor  # (N, 2 * c, h, w): posterior mean, then std, on the CPU
    scale: float  # 1 / std of the latents, so that the diffusion model sees unit variance
    model_shape: tuple[int, int, int]  # the latents' shape: what the network sees
    image_shape: tuple[int, int, int]  # the images' shape: what the autoencoder decodes to


def encode_dataset(cfg: RunConfig, data: ImageData, device: torch.device) -> EncodedData:
    """Load the frozen autoencoder, encode the data once, fit the latent scale."""
    if cfg.data.hflip:
        raise ValueError(
            "data.hflip = true does not combine with latent.autoencoder: each image is "
            "encoded once; set data.hflip = false"
        )
    ae = load_autoencoder(cfg.latent.autoencoder).to(device)
    moments = encode_posteriors(ae, data.images.to(device)).cpu()
    scale = fit_latent_scale(moments, torch.Generator().manual_seed(cfg.train.seed))
    ae.scale_factor.fill_(scale)
    return EncodedData(ae, moments, scale, tuple(ae.latent_shape), tuple(data.image_shape))


class LatentDiffusionObjective(DiffusionObjective):
    kind = "latent-diffusion"  # the checkpoint's kind

    def __init__(self, cfg: RunConfig, process: NoiseProcess, net: torch.nn.Module,
                 net_config: dict[str, Any], device: torch.device,
                 text: CaptionConditioning | None, latents: EncodedData):
        super().__init__(cfg, process, net, net_config, device, text, latents.model_shape)
        self.autoencoder, self.latent_scale = latents.autoencoder, latents.scale
        self.moments = latents.moments  # what the batches are drawn from, not the images
        self.image_shape = latents.image_shape

    def prepare(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A batch holds posterior moments: draw scaled latents from them."""
        return sample_latents(x, self.latent_scale, generator)

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            AUTOENCODER: {
                "network": {"type": "autoencoder", "config": self.autoencoder.config_dict()},
                "source": str(self.cfg.latent.autoencoder),
                "latent_scale": self.latent_scale,
                "image_shape": list(self.image_shape),
            },
            **super().checkpoint_config(),
        }

    def components(self) -> dict[str, dict[str, Tensor]]:
        return {AUTOENCODER: self.autoencoder.state_dict(), **super().components()}


@torch.no_grad()
def encode_posteriors(ae: Autoencoder, images: Tensor, batch_size: int = 500) -> Tensor:
    """uint8 images (N, C, H, W) -> posterior moments (N, 2 * c, h, w): mean, then std."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float() / 127.5 - 1.0
        post = ae.encode(x)
        out.append(torch.cat([post.mean, post.std], dim=1))
    return torch.cat(out)


def sample_latents(moments: Tensor, scale: float | Tensor, generator: torch.Generator) -> Tensor:
    """Scaled latents z * scale with z ~ N(mean, std^2), from encode_posteriors' moments."""
    mean, std = moments.chunk(2, dim=1)
    eps = torch.randn(mean.shape, generator=generator).to(mean.device)
    return (mean + std * eps) * scale


def fit_latent_scale(moments: Tensor, generator: torch.Generator, n: int = 10_000) -> float:
    """1 / std of unscaled posterior samples of (up to n of) the data (LDM sec. 4.3.2)."""
    z = sample_latents(moments[:n], 1.0, generator)
    std = float(z.float().std())
    if not std > 0:
        raise ValueError(f"the autoencoder's latents have std {std}; it cannot be used")
    return 1.0 / std
