"""EDM and flow matching as training objectives: the process trains its own network.

EDM (Karras et al. 2022) and flow matching (Lipman et al. 2023; Liu et al. 2023) fix what the
network predicts and how the loss is weighted: EDM's preconditioned F regressed on
(x0 - c_skip x) / c_out at log-normal noise levels (Table 1), flow's velocity eps - x0 at
logit-normal times (Esser et al. 2024). Both live in the process (difflab.diffusion.edm,
.flow: `training_loss`, oracle-tested there), so the objective only draws the batch and its
condition as every diffusion run does (pixels or latents, class labels or captions, the
condition dropped for classifier-free guidance) and averages the process' per-sample loss.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from difflab.diffusion.denoiser import OwnNetworkProcess
from difflab.training.objectives.diffusion import DiffusionObjective
from difflab.training.objectives.latent import LatentDiffusionObjective

Tensor = torch.Tensor


class ProcessLoss:
    """The loss of a run whose process trains its network (`OwnNetworkProcess`), for a
    diffusion objective: its `prepare` and `condition`, then the process' training loss."""

    process: OwnNetworkProcess

    def loss(self, model: torch.nn.Module, x: Tensor, labels: Tensor | None,
             generator: torch.Generator, autocast: AbstractContextManager) -> Tensor:
        x0 = self.prepare(x, generator).float()
        cond = self.condition(labels, generator)
        with autocast:  # the network's forward pass; the loss itself is float32
            per_sample = self.process.training_loss(model, x0, cond, generator)
        return per_sample.float().mean()


class PreconditionedObjective(ProcessLoss, DiffusionObjective):
    """EDM or flow matching in pixel space."""


class LatentPreconditionedObjective(ProcessLoss, LatentDiffusionObjective):
    """EDM or flow matching on a frozen autoencoder's latents (scaled to unit variance: EDM's
    diffusion.sigma_data = 1 suits them)."""
