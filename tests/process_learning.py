"""A learning check shared by the EDM and flow-matching tests (tests/test_edm.py,
tests/test_flow.py): train a tiny MLP with a process's own `training_loss` on Gaussian data and
measure, on held-out draws, how much of the gap between the zero network and the closed-form
optimal one it closes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TinyNet(nn.Module):
    """An MLP on (x, sinusoidal features of the time input)."""

    def __init__(self, dim: int = 2, hidden: int = 64, freqs: int = 4):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(freqs))
        self.net = nn.Sequential(
            nn.Linear(dim + 2 * freqs + 1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x, t, cond=None):
        t = t.float()[:, None]
        feats = torch.cat([t, torch.sin(t * self.freqs), torch.cos(t * self.freqs)], 1)
        return self.net(torch.cat([x.float(), feats], 1))


def held_out_losses(process, optimal: Callable, mu: float = 0.8, s: float = 0.3,
                    dim: int = 2, steps: int = 400) -> tuple[float, float, float]:
    """(trained, zero, best): held-out losses of a TinyNet after `steps` Adam steps on
    N(mu, s^2 I), of the zero network, and of the closed-form optimum `optimal`."""
    torch.manual_seed(0)
    net = TinyNet(dim)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x0 = mu + s * torch.randn(256, dim, generator=gen)
        loss = process.training_loss(net, x0, None, gen)
        assert loss.shape == (256,) and loss.dtype == torch.float32
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    held = torch.Generator().manual_seed(5)
    n = 20000
    x0 = mu + s * torch.randn(n, dim, generator=held, dtype=torch.float64)
    t, noise = process.sample_t(n, held), torch.randn(n, dim, generator=held, dtype=torch.float64)
    with torch.no_grad():
        trained = float(process.loss_at(net, x0.float(), t, noise.float()).mean())
    zero = float(process.loss_at(lambda x, t, cond=None: torch.zeros_like(x), x0, t, noise).mean())
    best = float(process.loss_at(optimal, x0, t, noise).mean())
    return trained, zero, best
