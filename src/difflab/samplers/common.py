"""Small helpers every sampler shares: time-grid checks and the per-step callback.

Randomness: a sampler accepts `generator` as one `torch.Generator` or a list with one generator
per sample (difflab.diffusion.noise), so the same seed gives the same image whatever the batch
size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from difflab.diffusion.process import NoiseProcess

Tensor = torch.Tensor
Callback = Callable[[dict[str, Any]], None] | None


def check_timesteps(process: NoiseProcess, timesteps: Tensor) -> Tensor:
    """Validate a sampling time grid: 1-D, strictly decreasing, inside [t_min, t_max]."""
    ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if ts.numel() < 1:
        raise ValueError("the time grid is empty; give at least one time")
    if ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"the time grid must be strictly decreasing, got {ts.tolist()[:8]}...")
    lo, hi = process.t_min, process.t_max
    if float(ts.min()) < lo - 1e-9 or float(ts.max()) > hi + 1e-9:
        raise ValueError(
            f"times must lie in [{lo}, {hi}] for this process, got "
            f"[{float(ts.min())}, {float(ts.max())}]"
        )
    return ts


def emit(callback: Callback, **info: Any) -> None:
    """Call the per-step callback, if any, with a dict {'x', 'i', 't', 'denoised', ...}."""
    if callback is not None:
        callback(info)
