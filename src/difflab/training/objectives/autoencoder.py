"""The autoencoder of latent diffusion (Rombach et al. 2022, sec. 3): reconstruction + KL,
no noise. Its checkpoint is what `latent.autoencoder` of a latent diffusion run points to."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from difflab.config import RunConfig
from difflab.models.autoencoder import autoencoder_loss


class AutoencoderObjective:
    kind = "autoencoder"  # the checkpoint's kind

    def __init__(self, cfg: RunConfig, net: torch.nn.Module, net_config: dict[str, Any]):
        self.cfg, self.net, self.net_config = cfg, net, net_config
        self.autoencoder = None  # a frozen autoencoder of latent diffusion: not this one
        self.latent_scale = None
        self.text = None

    def loss(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
             generator: torch.Generator, autocast: AbstractContextManager) -> torch.Tensor:
        ac = self.cfg.autoencoder
        with autocast:
            loss, _ = autoencoder_loss(
                model, x, recon=ac.recon, kl_weight=ac.kl_weight, generator=generator
            )
        return loss

    def checkpoint_config(self) -> dict[str, Any]:
        return {}

    def components(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}
