"""Attention layers for image feature maps and for conditioning tokens.

References:
- Vaswani et al. (2017), "Attention Is All You Need": scaled dot-product, multi-head.
- Ho et al. (2020), DDPM: self-attention blocks at low resolution inside the UNet.
- Shen et al. (2021), "Efficient Attention: Attention with Linear Complexities", and
  Katharopoulos et al. (2020), "Transformers are RNNs": attention computed as
  ``q (k^T v)``, linear in the number of positions.
- Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models":
  cross-attention from image tokens to a conditioning sequence (text tokens).

All layers are residual with a zero-initialised output projection, so inserting one into a
trained or fresh network starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import zero_init

# Largest attention matrix (queries x keys) computed with plain matmuls on CPU. Measured with
# torch 2.13, bf16, one thread, forward + backward: for 49 tokens PyTorch's CPU flash kernel
# took 50 ms against 5.5 ms for matmul-softmax-matmul, for 196 tokens 260 ms against 125 ms;
# at 784 tokens the fused kernel wins (410 ms against 660 ms) and saves the N x N memory.
CPU_MATMUL_ATTENTION_MAX = 256 * 256


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``(B, nh, N, d)`` queries and ``(B, nh, L, d)`` keys.

    ``mask``: optional bool, broadcastable to ``(B, nh, N, L)``, True where a query may
    attend. Uses ``F.scaled_dot_product_attention`` (fused kernels) except for short
    sequences on CPU, where three plain ops are several times faster.
    """
    n, l = q.shape[-2], k.shape[-2]
    if q.device.type == "cpu" and n * l <= CPU_MATMUL_ATTENTION_MAX:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, nh, N, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1) @ v  # (B, nh, N, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _check_heads(channels: int, num_heads: int) -> int:
    if num_heads < 1 or channels % num_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must be >= 1 and divide the channel count ({channels})"
        )
    return channels // num_heads


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all positions of a ``(B, C, H, W)`` map.

    ``x + proj(attention(qkv(GroupNorm(x))))``. The q/k/v and output projections are 1x1
    convolutions, written as Linear layers on the ``(B, HW, C)`` token view: identical
    maths, and for channels-last tensors that view costs no copy. The attention itself is
    :func:`attention` (``F.scaled_dot_product_attention``, or plain matmuls for short
    sequences on CPU, where that is faster).
    Cost is quadratic in ``H*W``, so use it at low resolutions (e.g. 7x7, 14x14).
    """

    def __init__(
        self, channels: int, num_heads: int = 4, *, groups: int = 8, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = _check_heads(channels, num_heads)
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, HW, hd)
        out = attention(q, k, v)  # (B, nh, HW, hd)
        out = out.transpose(1, 2).reshape(b, h * w, c)  # (B, HW, C)
        out = self.proj(out).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + out


class LinearAttention2d(nn.Module):
    """Efficient (linear) attention over a ``(B, C, H, W)`` map, after Shen et al.

    ``E = softmax_d(Q) (softmax_n(K)^T V)``: queries are normalised over their feature
    dimension, keys over positions, so ``K^T V`` is a ``(d, d)`` summary per head and the
    cost grows linearly with ``H*W``. This makes global mixing affordable at high
    resolutions (28x28 and up) where full attention is too expensive.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        *,
        head_dim: int | None = None,
        groups: int = 8,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or _check_heads(channels, num_heads)
        inner = self.num_heads * self.head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.proj = zero_init(nn.Linear(inner, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, HW, hd)
        # Softmaxes in float32: they are reductions, and bf16 sums lose the small terms.
        q = q.float().softmax(dim=-1).to(v.dtype)  # over features d
        k = k.float().softmax(dim=-2).to(v.dtype)  # over positions n
        context = k.transpose(-2, -1) @ v  # (B, nh, hd, hd)
        out = q @ context  # (B, nh, HW, hd)
        out = out.transpose(1, 2).reshape(b, h * w, -1)  # (B, HW, nh*hd)
        out = self.proj(out).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + out


class CrossAttention(nn.Module):
    """Multi-head attention from query tokens ``x`` to a context sequence.

    ``x``: ``(B, N, query_dim)``; ``context``: ``(B, L, context_dim)`` (e.g. text-encoder
    token embeddings), or None for self-attention over ``x``. ``context_mask``: optional
    bool ``(B, L)``, True for real tokens and False for padding (the convention of
    tokenizers' ``attention_mask``); every row needs at least one True. Returns only the
    attention output ``(B, N, query_dim)``; the caller adds the residual, so a spatial
    transformer can place its norms as it likes.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        num_heads: int = 4,
        head_dim: int | None = None,
        *,
        zero_out: bool = True,
    ) -> None:
        super().__init__()
        context_dim = query_dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.head_dim = head_dim or _check_heads(query_dim, num_heads)
        inner = self.num_heads * self.head_dim
        # No biases on q/k/v: a bias on k shifts every score of a query equally (softmax
        # ignores it), so it only costs parameters.
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        if zero_out:
            zero_init(self.to_out)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, n, hd)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        context = x if context is None else context
        mask = None
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ValueError(
                    f"context_mask must have shape {tuple(context.shape[:2])} (B, L), "
                    f"got {tuple(context_mask.shape)}"
                )
            context_mask = context_mask.bool()
            if (
                context_mask.device.type == "cpu"
                and not torch.compiler.is_compiling()
                and not bool(context_mask.any(dim=1).all())
            ):
                raise ValueError("context_mask has a row with no True entry (nothing to attend)")
            mask = context_mask[:, None, None, :]  # (B, 1, 1, L), broadcast over heads/queries
        q = self._heads(self.to_q(x))
        k = self._heads(self.to_k(context))
        v = self._heads(self.to_v(context))
        out = attention(q, k, v, mask)  # (B, nh, N, hd)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # (B, N, query_dim)
