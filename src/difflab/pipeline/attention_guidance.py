"""Self-guidance on a text model's own cross-attention maps, without training.

While sampling, the conditional network's cross-attention maps say where each word of the
prompt is being drawn. An energy g on those maps (two objects on the wrong sides, a colour
drawn on the wrong object) is differentiable in x_t, and self-guidance (Epstein et al. 2023,
"Diffusion Self-Guidance for Controllable Image Generation", eq. 3) adds its gradient to the
noise prediction:

    eps~ = eps + sigma_t * grad_x sum_k s_k g_k(x_t),

one forward and backward pass of the conditional network a guided step. The energies are
the prompt's own, one per sample (difflab.pipeline.relation_guidance,
difflab.pipeline.binding_guidance), each with its scale s_k folded in; they read the maps at
the finest resolution that has cross-attention (all those layers and heads averaged), and
guidance applies while the noise level sigma (Karras et al.'s sigma_t / alpha_t) is above
ATTENTION_SIGMA_LOW, where the layout and the colours of a scene are decided.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from difflab.diffusion.denoiser import Denoiser, Prediction
from difflab.diffusion.process import as_time
from difflab.models.attention import recording_attention_maps

Tensor = torch.Tensor

ATTENTION_SIGMA_LOW = 0.5  # guide only at noise levels sigma above this

# One sample's energy: its finest attention maps (N positions, L context tokens) -> a scalar.
SampleEnergy = Callable[[Tensor], Tensor]


class AttentionGuidedDenoiser:
    """Self-guidance (module docstring) around any denoiser `den`. `net` and `conditional` are
    the conditional network and its denoiser, whose maps are read; `energies` holds one
    SampleEnergy (or None: unguided) per sample."""

    def __init__(self, den: Denoiser, net: torch.nn.Module, conditional: Denoiser,
                 energies: list[SampleEnergy | None]):
        self.den, self.net, self.conditional = den, net, conditional
        self.energies = energies
        self.process = den.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        p = self.den(x, t)
        tt = as_time(t, x.shape[0], x.device)
        has_energy = torch.tensor([e is not None for e in self.energies], device=x.device)
        guided = (self.process.sigma_ve(tt).to(x.device) > ATTENTION_SIGMA_LOW) & has_energy
        if not bool(guided.any()):
            return p
        _, sigma = self.process.coefficients(tt, x)
        eps = p.eps + sigma * self.energy_gradient(x, t)
        x0 = self.process.x0_from_eps(x, tt, eps)
        # Unguided samples keep the prediction bit for bit: recomputing x0 from an unchanged
        # eps rounds differently on some CPUs, and a prompt without a relation must be drawn
        # exactly as it would be without guidance.
        keep = guided.view(-1, *[1] * (x.ndim - 1))
        return Prediction(torch.where(keep, x0, p.x0), torch.where(keep, eps, p.eps))

    def energy_gradient(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x of the summed energies of the samples."""
        if torch.is_inference_mode_enabled():  # no graph can be built: guidance would be nil
            raise ValueError(
                "relation and binding guidance need gradients: sample outside "
                "torch.inference_mode() (torch.no_grad() is fine), or set them to 0")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            with recording_attention_maps(self.net) as maps:
                self.conditional(x, t)
            finest = finest_maps(maps)
            energy = sum((e(finest[b]) for b, e in enumerate(self.energies) if e is not None),
                         start=finest.new_zeros(()))
            if not energy.requires_grad:  # every energy is constant here
                return torch.zeros_like(x)
            return torch.autograd.grad(energy, x)[0]


def scaled_energy(scale: float, energy: Callable[[Any, Tensor], Tensor],
                  target: Any) -> SampleEnergy:
    """One sample's SampleEnergy: `energy(target, maps)` times its guidance scale."""
    return lambda maps: scale * energy(target, maps)


def summed_energy(energies: list[SampleEnergy]) -> SampleEnergy:
    """Several energies of one sample as one (relation and binding guidance together)."""
    return lambda maps: sum((e(maps) for e in energies[1:]), start=energies[0](maps))


def finest_maps(maps: list[Tensor]) -> Tensor:
    """The mean of the recorded maps ``(B, N, L)`` at the largest N (the finest resolution)."""
    finest = max(m.shape[1] for m in maps)
    return torch.stack([m for m in maps if m.shape[1] == finest]).mean(0)


def word_map(maps: Tensor, positions: list[int]) -> Tensor:
    """A word's attention map ``(N,)`` over the positions, summed over its word pieces and
    normalised to sum 1: where the network draws the word."""
    m = maps[:, positions].sum(-1)
    return m / m.sum().clamp_min(1e-12)


def pieces_within(spans: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the word pieces whose characters lie in [start, end)."""
    return [i for i, (a, b) in enumerate(spans) if b > a and a >= start and b <= end]
