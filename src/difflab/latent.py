"""The latent side of latent diffusion (Rombach et al. 2022): a frozen autoencoder, the data's
posteriors computed once, and the scaled latents a diffusion model trains on.

A latent diffusion run encodes every training image once (the autoencoder is frozen, so its
posterior never changes) and keeps mean and std of q(z | x) in memory: 60,000 Fashion-MNIST
images at 7x7x4 take 94 MB. Each training step then draws z = mean + std * eps, as LDM does,
for the cost of one multiply-add instead of an encoder pass.
"""

from __future__ import annotations

from pathlib import Path

import torch

from difflab.build import network_from_spec
from difflab.models.autoencoder import Autoencoder
from difflab.training.checkpoint import CheckpointError, load_checkpoint, load_weights_into

Tensor = torch.Tensor


def autoencoder_from_weights(spec: dict, weights: dict[str, Tensor], source: str) -> Autoencoder:
    """Rebuild a frozen autoencoder from its network spec and weights."""
    if spec.get("type") != "autoencoder":
        raise CheckpointError(f"{source}: expected an autoencoder, got a {spec.get('type')!r}")
    ae = network_from_spec(spec)
    load_weights_into(ae, weights, source)
    ae.float().eval().requires_grad_(False)
    return ae


def load_autoencoder(path: str | Path) -> Autoencoder:
    """The frozen autoencoder (EMA weights) of an autoencoder checkpoint: a folder or the name
    of a shipped one."""
    from difflab.pipeline import resolve_checkpoint

    path = resolve_checkpoint(path)
    ck = load_checkpoint(path)
    if ck.config.get("kind") != "autoencoder":
        raise CheckpointError(
            f"latent.autoencoder = {str(path)!r} holds a {ck.config.get('kind')!r} model, not an "
            "autoencoder; train one with a kl-f* preset (configs/fashion_autoencoder.toml)"
        )
    return autoencoder_from_weights(ck.config["network"], ck.weights(True), str(path))


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
