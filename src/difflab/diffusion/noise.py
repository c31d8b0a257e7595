"""Gaussian noise from explicit generators, the one source of randomness for sampling and
the likelihood bounds.

A function here accepts `generator` as one `torch.Generator` or a list with one generator per
sample. With a list, sample i draws all its noise from generator i, so the same seed gives the
same image whatever the batch size (`per_sample_generators`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor
GeneratorLike = torch.Generator | Sequence[torch.Generator] | None


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
