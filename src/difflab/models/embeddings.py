"""Time embeddings: how a network learns which noise level it is looking at.

A diffusion network sees the time ``t`` as a float: a discrete step index in ``[0, T)`` or a
continuous time in ``[0, 1]``. These modules turn that scalar into a vector a network can use.

References:
- Vaswani et al. (2017), "Attention Is All You Need", section 3.5: sinusoidal positional
  encoding ``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(...)``.
- Ho et al. (2020), "Denoising Diffusion Probabilistic Models", appendix B: the same
  encoding of the step index, followed by a two-layer MLP, feeds every residual block.
- Tancik et al. (2020), "Fourier Features Let Networks Learn High Frequency Functions in
  Low Dimensional Domains": ``[sin(2 pi W t), cos(2 pi W t)]`` with fixed random ``W``.
- Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential
  Equations": Gaussian Fourier features of continuous time for score networks.
- He et al. (2022, MAE) and Peebles & Xie (2023, DiT): the same code applied to the row and
  the column of a token in a 2-D map, which tells a transformer where each token lies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(
    t: Tensor, dim: int, max_period: float = 10000.0, *, interleave: bool = False
) -> Tensor:
    """Transformer sinusoidal embedding of float times ``t`` (shape ``(B,)``) -> ``(B, dim)``.

    Frequencies follow Vaswani et al. exactly: ``w_i = max_period^(-2i/dim) =
    max_period^(-i/half)`` for ``i = 0 .. half-1`` with ``half = dim // 2``.

    Layout: by default the first half holds ``sin(t w_i)`` and the second half
    ``cos(t w_i)`` (the layout of the DDPM reference code). ``interleave=True`` gives
    Vaswani's layout instead (``sin`` in even columns, ``cos`` in odd ones). The two differ
    only by a fixed permutation of columns, which a following Linear layer absorbs, so the
    choice matters only for reproducing a particular table. An odd ``dim`` gets a last
    column of zeros.
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2 for a sinusoidal embedding, got {dim}")
    half = dim // 2
    # Computed in float32 (or float64 if given) even under autocast: bf16 cannot even
    # represent step 999 exactly, and sin/cos of large arguments need the mantissa.
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    exponent = torch.arange(half, device=t.device, dtype=t.dtype) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # (half,)
    args = t.reshape(-1, 1) * freqs  # (B, half)
    if interleave:
        emb = torch.stack([args.sin(), args.cos()], dim=-1).flatten(1)  # (B, 2*half)
    else:
        emb = torch.cat([args.sin(), args.cos()], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module form of :func:`sinusoidal_embedding`; works for any float ``t``."""

    def __init__(self, dim: int, max_period: float = 10000.0, interleave: bool = False) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2 for a sinusoidal embedding, got {dim}")
        self.dim = dim
        self.max_period = max_period
        self.interleave = interleave

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t, self.dim, self.max_period, interleave=self.interleave)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, interleave={self.interleave}"


class SinusoidalTable(nn.Module):
    """Frozen lookup table of sinusoidal embeddings for integer steps ``0 .. num_steps-1``.

    This is the ``nn.Embedding`` initialised with the sinusoidal table and frozen, as in the
    well-known Fashion-MNIST DDPM article; like that table (and Vaswani's), columns are
    interleaved (sin, cos, sin, ...) by default. Float steps are rounded to the nearest integer;
    a step outside the table is an error rather than a silent clamp. The table is a
    non-persistent buffer: it is recomputed from ``(num_steps, dim)``, so checkpoints do
    not carry it and it never receives gradients.
    """

    def __init__(
        self, num_steps: int, dim: int, max_period: float = 10000.0, interleave: bool = True
    ) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.dim = dim
        steps = torch.arange(num_steps, dtype=torch.float64)
        table = sinusoidal_embedding(steps, dim, max_period, interleave=interleave).float()
        self.register_buffer("table", table, persistent=False)  # (num_steps, dim)

    def forward(self, t: Tensor) -> Tensor:
        index = t.round().long().reshape(-1)
        if index.device.type == "cpu" and index.numel() > 0 and not torch.compiler.is_compiling():
            # On CPU the check is free; on an accelerator it would force a sync.
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.num_steps:
                raise ValueError(
                    f"t must hold steps in [0, {self.num_steps}) for this table, "
                    f"got values in [{lo}, {hi}]"
                )
        return self.table[index]  # (B, dim)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, dim={self.dim}"


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features of a scalar time: ``[sin(2 pi W t), cos(2 pi W t)]``.

    ``W ~ N(0, scale^2)`` is drawn once (from ``seed``, so the same settings give the same
    features before any checkpoint is loaded) and kept fixed, as in Tancik et al. and the
    score-SDE networks of Song et al. It is a persistent buffer, so it travels with the
    weights. ``scale`` sets the highest frequencies: 16-30 suits ``t`` in ``[0, 1]``; for
    step indices in the hundreds use a much smaller scale (or scale ``t`` down).
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even number >= 2, got {dim}")
        self.dim = dim
        self.scale = scale
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(dim // 2, generator=generator) * scale
        self.register_buffer("weight", weight)  # (dim // 2,)

    def forward(self, t: Tensor) -> Tensor:
        t = t.to(torch.float32).reshape(-1, 1)
        args = 2 * math.pi * t * self.weight  # (B, dim // 2)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class TimeMLP(nn.Module):
    """``embedding(t) -> Linear -> SiLU -> Linear``: the time-embedding network of DDPM.

    The fixed embedding gives a rich but rigid code of ``t``; the MLP lets the network learn
    which features of the noise level each block should react to.
    """

    def __init__(self, embedding: nn.Module, embed_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.embedding(t))


def position_code_2d(rows: int, cols: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine code ``(rows * cols, dim)`` of a ``rows x cols`` token map.

    As in DiT/MAE: half the features are Vaswani's 1-D code of the token's row, the other
    half of its column. Tokens are in raster order, matching ``flatten`` of a ``(h, w)`` map.
    """
    rows_of = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)  # 0,0,..,1,1,..
    cols_of = torch.arange(cols, dtype=torch.float64).repeat(rows)  # 0,1,..,0,1,..
    half = dim // 2
    code = torch.cat(
        [sinusoidal_embedding(rows_of, half), sinusoidal_embedding(cols_of, dim - half)], dim=-1
    )
    return code.float()


def position_embedding_2d(grid: int, dim: int) -> Tensor:
    """:func:`position_code_2d` of a square ``grid x grid`` map (DiT's patch grid)."""
    return position_code_2d(grid, grid, dim)
