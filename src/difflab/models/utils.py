"""Small measurements of a network: parameter count and forward FLOPs per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (by default only those that receive gradients)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def estimate_flops(
    net: nn.Module,
    shape: Sequence[int],
    t: float = 500.0,
    cond: torch.Tensor | None = None,
) -> int:
    """Forward FLOPs per image of ``net(x, t, cond)`` for an input of ``shape``.

    ``shape`` is ``(C, H, W)`` (batch 1 is used) or ``(B, C, H, W)`` (the count is divided
    by B). Counts what ``torch.utils.flop_counter`` knows: convolutions, matmuls and
    attention, a multiply-add being 2 FLOPs; norms and activations are left out, as is
    usual. A training step costs about 3x this (forward + backward).
    """
    shape = tuple(shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        raise ValueError(f"shape must be (C, H, W) or (B, C, H, W), got {shape}")
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(shape, device=device)
    t_batch = torch.full((shape[0],), float(t), device=device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, t_batch, cond)
    finally:
        net.train(was_training)
    return counter.get_total_flops() // shape[0]
