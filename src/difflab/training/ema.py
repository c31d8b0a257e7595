"""Exponential moving average of model weights (Polyak averaging), the weights that get sampled.

Diffusion models sample far better from an EMA of their weights than from the raw weights
(Ho et al. 2020 use decay 0.9999; Song & Ermon 2020, "Improved techniques", sec. 3.5). With
`warmup`, the decay ramps as min(decay, (1 + n) / (10 + n)) so that a short run is not
dominated by its random initialisation (the schedule used by TensorFlow's EMA).

A power EMA (Karras et al. 2024, EDM2 eq. 4) instead averages a fixed share of the run,
`sigma_rel`, whatever its length: the average of a 2,600-step run and of a 26,000-step run
cover the same fraction of their training (`train.ema_length`, `train.posthoc_ema`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from difflab.training.posthoc_ema import beta, sigma_rel_to_gamma


class EMA:
    """Keeps a frozen copy of a model whose parameters track an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0
        # The tensors an update touches, listed once: walking the modules each step costs
        # about as much as the update itself on a small network (BENCHMARKS.md, "Where a
        # training step's time goes"). Loading a state dict copies into these same tensors.
        self._params = list(self.model.parameters())
        self._buffers = list(self.model.buffers())
        self._source: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None = None

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        if self._source is None or self._source[0] is not model:
            self._source = (model, list(model.parameters()), list(model.buffers()))
        _, params, buffers = self._source
        # ema <- decay * ema + (1 - decay) * param, fused over all tensors.
        torch._foreach_lerp_(self._params, params, 1.0 - decay)
        for b_ema, b in zip(self._buffers, buffers, strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = num_updates


class PowerEMA(EMA):
    """An EMA whose decay at step t is (1 - 1/t)^(gamma + 1) (EDM2 eq. 4): its profile over
    the run is proportional to t^gamma, so its length is a fixed share of the run, sigma_rel.
    num_updates must count the run's steps (warm starts count from 0, resumes restore it)."""

    def __init__(self, model: nn.Module, sigma_rel: float):
        super().__init__(model, decay=0.0, warmup=False)
        self.sigma_rel, self.gamma = sigma_rel, sigma_rel_to_gamma(sigma_rel)

    def current_decay(self) -> float:
        return beta(self.gamma, self.num_updates + 1)
