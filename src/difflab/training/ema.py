"""Exponential moving average of model weights (Polyak averaging), the weights that get sampled.

Diffusion models sample far better from an EMA of their weights than from the raw weights
(Ho et al. 2020 use decay 0.9999; Song & Ermon 2020, "Improved techniques", sec. 3.5). With
`warmup`, the decay ramps as min(decay, (1 + n) / (10 + n)) so that a short run is not
dominated by its random initialisation (the schedule used by TensorFlow's EMA).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps a frozen copy of a model whose parameters track an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        # ema <- decay * ema + (1 - decay) * param, fused over all tensors.
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = num_updates
