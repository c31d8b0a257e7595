"""Denoising diffusion in pixel space (Ho et al. 2020; Salimans & Ho 2022 for v): draw t and
noise, noise the data by the forward process, and regress the network's output on its target
(difflab.diffusion.losses), optionally conditioned on a class or a caption with the condition
dropped at random for classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from difflab.config import RunConfig
from difflab.diffusion.denoiser import scale_network_output
from difflab.diffusion.losses import diffusion_loss
from difflab.diffusion.noise import randn
from difflab.diffusion.process import NoiseProcess
from difflab.training.objectives.text import CaptionConditioning


class DiffusionObjective:
    kind = "pixel-diffusion"  # the checkpoint's kind

    def __init__(self, cfg: RunConfig, process: NoiseProcess, net: torch.nn.Module,
                 net_config: dict[str, Any], device: torch.device,
                 text: CaptionConditioning | None, model_shape: tuple[int, int, int]):
        self.cfg, self.process, self.device = cfg, process, device
        self.net, self.net_config = net, net_config
        self.text, self.model_shape = text, tuple(model_shape)
        self.num_classes = net_config.get("num_classes")
        self.autoencoder, self.latent_scale = None, None

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The clean sample x0 a batch holds (here: the images themselves)."""
        return x

    def condition(self, labels: torch.Tensor | None, generator: torch.Generator) -> Any:
        """The network's condition for a batch: a caption of each label's class, or the label,
        either dropped with probability train.cond_drop_prob (classifier-free guidance)."""
        if self.text is not None:
            return self.text.condition(labels, generator, self.cfg.train.cond_drop_prob)
        if self.num_classes is None:
            return None
        drop = torch.rand(len(labels), generator=generator) < self.cfg.train.cond_drop_prob
        return torch.where(drop.to(self.device), self.num_classes, labels)  # the null class

    def loss(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
             generator: torch.Generator, autocast: AbstractContextManager) -> torch.Tensor:
        x0 = self.prepare(x, generator)
        dc = self.cfg.diffusion
        t = self.process.sample_t(x0.shape[0], generator).to(self.device)
        eps = randn(x0.shape, generator).to(self.device)
        x_t = self.process.q_sample(x0, t, eps).float()
        cond = self.condition(labels, generator)
        with autocast:
            out = model(x_t, t.float(), cond)
        out = scale_network_output(self.process, out.float(), t, dc.parameterization)
        return diffusion_loss(out, self.process, dc.parameterization, x0, eps, t,
                              loss_type=dc.loss, snr_gamma=dc.snr_gamma)

    def checkpoint_config(self) -> dict[str, Any]:
        """What the checkpoint's config.json carries beside the network."""
        return {"text_encoder": self.text.encoder.spec()} if self.text is not None else {}

    def components(self) -> dict[str, dict[str, torch.Tensor]]:
        """Parts saved beside the network: the caption bank of a pooled-text model."""
        return self.text.components() if self.text is not None else {}
