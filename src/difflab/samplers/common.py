"""Small helpers every sampler shares: noise from explicit generators, time-grid checks, callbacks.

Randomness: a sampler accepts `generator` as one `torch.Generator` or a list with one generator
per sample. With a list, sample i draws all its noise from generator i, so the same seed gives
the same image whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from difflab.diffusion.process import NoiseProcess

Tensor = torch.Tensor
GeneratorLike = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None] | None


def randn(
    shape: Sequence[int],
    generator: GeneratorLike = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of `shape`, drawn per sample when given a list of generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(
            f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample"
        )
    return torch.stack(
        [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]
    ).to(device)


def randn_like(x: Tensor, generator: GeneratorLike = None) -> Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


def per_sample_generators(seed: int, n: int, offset: int = 0) -> list[torch.Generator]:
    """Generators for samples offset..offset+n-1 of a run seeded with `seed`."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + offset + i) for i in range(n)]


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
