"""Attention layers for image feature maps and for conditioning tokens.

References:
- Vaswani et al. (2017), "Attention Is All You Need": scaled dot-product, multi-head.
- Ho et al. (2020), DDPM: self-attention blocks at low resolution inside the UNet.
- Shen et al. (2021), "Efficient Attention: Attention with Linear Complexities", and
  Katharopoulos et al. (2020), "Transformers are RNNs": attention computed as
  ``q (k^T v)``, linear in the number of positions.
- Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models":
  cross-attention from image tokens to a conditioning sequence (text tokens), and the
  spatial transformer (self-attention, cross-attention, feed-forward on a feature map).
- Shazeer (2020), "GLU Variants Improve Transformer": the GEGLU feed-forward.
- Vaswani et al. (2017) sec. 3.5 and Peebles & Xie (2023, DiT): a fixed sine-cosine code of
  each token's position added to the tokens (here optional, through a learned projection).

All layers on feature maps are residual with a zero-initialised output projection, so
inserting one into a trained or fresh network starts as the identity.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import zero_init
from .embeddings import position_code_2d

# Largest attention matrix (queries x keys) computed with plain matmuls on CPU. Measured with
# torch 2.13, bf16, one thread, forward + backward: for 49 tokens PyTorch's CPU flash kernel
# took 50 ms against 5.5 ms for matmul-softmax-matmul, for 196 tokens 260 ms against 125 ms;
# at 784 tokens the fused kernel wins (410 ms against 660 ms) and saves the N x N memory.
CPU_MATMUL_ATTENTION_MAX = 256 * 256


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``(B, nh, N, d)`` queries and ``(B, nh, L, d)`` keys.

    ``mask``: optional bool, broadcastable to ``(B, nh, N, L)``, True where a query may
    attend. A query whose mask row is all False attends to nothing and gets a zero output
    (a softmax over no keys would be NaN). Uses ``F.scaled_dot_product_attention`` (fused
    kernels) except for short sequences on CPU, where three plain ops are several times
    faster.
    """
    keep = None
    if mask is not None:
        keep = mask.any(dim=-1, keepdim=True)  # (..., N, 1): rows with a key to attend to
        # Empty rows attend everywhere (finite, no NaN), then are zeroed; no host sync.
        mask = mask | ~keep
    n, l = q.shape[-2], k.shape[-2]
    if q.device.type == "cpu" and n * l <= CPU_MATMUL_ATTENTION_MAX:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, nh, N, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (B, nh, N, d)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if keep is None else out * keep


def _probabilities(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d)) ``(B, nh, N, L)``, as :func:`attention` weighs the values (a
    row with no key to attend to is spread evenly instead of NaN)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~(mask | ~mask.any(dim=-1, keepdim=True)), float("-inf"))
    return scores.softmax(dim=-1)


# What this thread (or task) records: the ids of the layers recorded and the list of maps.
# A context variable, not an attribute of the shared layers, so that a server sampling with
# one network on several threads records each request's maps apart.
_RECORDING: contextvars.ContextVar[tuple[frozenset[int], list[Tensor]] | None] = (
    contextvars.ContextVar("difflab_attention_maps", default=None)
)
# How many recordings are open in any thread: the forward pass reads the context variable only
# when one is, so that torch.compile (which cannot trace ContextVar.get) sees a plain global
# and no graph break when nothing records.
_open_recordings = 0
_open_lock = threading.Lock()


@contextlib.contextmanager
def recording_attention_maps(net: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, every cross-attention to a context in ``net`` called from this
    thread appends its probabilities ``(B, N, L)`` (averaged over heads, with their autograd
    graph, in call order) to the yielded list."""
    layers = frozenset(id(m) for m in net.modules() if isinstance(m, CrossAttention))
    global _open_recordings
    maps: list[Tensor] = []
    token = _RECORDING.set((layers, maps))
    with _open_lock:
        _open_recordings += 1
    try:
        yield maps
    finally:
        with _open_lock:
            _open_recordings -= 1
        _RECORDING.reset(token)


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
    tokenizers' ``attention_mask``). A row with no True entry attends to nothing: its
    output is exactly zero, the same as having no context (an all-padding prompt is "no
    prompt"). Returns only the attention output ``(B, N, query_dim)``; the caller adds the
    residual, so a spatial transformer can place its norms as it likes.

    Within :func:`recording_attention_maps`, each call with a context also records its
    attention probabilities, for guidance that reads where each word is drawn.
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
            mask = context_mask[:, None, None, :]  # (B, 1, 1, L), broadcast over heads/queries
        q = self._heads(self.to_q(x))
        k = self._heads(self.to_k(context))
        v = self._heads(self.to_v(context))
        out = attention(q, k, v, mask)  # (B, nh, N, hd); zero for fully masked rows
        recording = _RECORDING.get() if _open_recordings else None
        # `context is not x`: a layer called as self-attention (no context, or itself as the
        # context, as a token layer does) has no words to record
        if recording is not None and id(self) in recording[0] and context is not x:
            recording[1].append(_probabilities(q, k, mask).mean(dim=1))
        b, _, n, _ = out.shape
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # (B, N, query_dim)
        if context_mask is not None:
            # Fully masked rows: drop to_out's bias too, so "nothing to attend" adds nothing.
            out = out * context_mask.any(dim=1)[:, None, None].to(out.dtype)
        return out


class FeedForward(nn.Module):
    """Position-wise MLP of a transformer block: GEGLU (Shazeer 2020, as in latent
    diffusion) or a plain GELU MLP. ``mult`` is the hidden width over the input width (a
    float such as DiT's ``mlp_ratio`` is allowed; the hidden width is rounded down)."""

    def __init__(self, dim: int, mult: float = 4, *, gated: bool = True) -> None:
        super().__init__()
        hidden = int(dim * mult)
        self.gated = gated
        # GEGLU: one matmul gives both halves, value * gelu(gate).
        self.proj_in = nn.Linear(dim, 2 * hidden if gated else hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj_in(x)
        if self.gated:
            value, gate = h.chunk(2, dim=-1)
            h = value * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self.proj_out(h)


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer on tokens ``(B, N, dim)`` (Vaswani et al.; LDM's
    ``BasicTransformerBlock``): self-attention, cross-attention to a context, feed-forward,
    each ``x + f(LayerNorm(x))``. With ``context`` None the cross-attention is skipped,
    which equals attending to a fully masked context (zero output)."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int,
        head_dim: int,
        ff_mult: int = 4,
        *,
        gated: bool = True,
    ) -> None:
        super().__init__()
        # Inner outputs are not zero-initialised: the transformer's proj_out is, which
        # already makes the whole block start as the identity (as in LDM).
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, None, num_heads, head_dim, zero_out=False)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, context_dim, num_heads, head_dim, zero_out=False)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, gated=gated)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        if context is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class TokenLayer(nn.Module):
    """Pre-LN transformer layer over a token sequence ``(B, L, width)`` with a padding mask:
    ``x + attn(LN(x))`` (self-attention whose keys are the real tokens only), then
    ``x + ff(LN(x))``. :class:`TransformerBlock`'s self-attention takes no mask (image
    positions are never padding); text is, so the real tokens of a prompt never see the
    padding that batching added. Used by the text encoders and the text layers of a UNet.
    """

    def __init__(self, width: int, num_heads: int, ff_mult: int = 4, *, gated: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CrossAttention(width, None, num_heads, zero_out=False)
        self.norm2 = nn.LayerNorm(width)
        self.ff = FeedForward(width, ff_mult, gated=gated)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)  # keys restricted to real tokens
        return x + self.ff(self.norm2(x))


class SpatialTransformer(nn.Module):
    """Transformer over the positions of a ``(B, C, H, W)`` map, conditioned on a context
    sequence by cross-attention (Rombach et al. 2022, LDM's ``SpatialTransformer``).

    ``x + proj_out(blocks(proj_in(GroupNorm(x))))`` where the map is viewed as ``H*W``
    tokens and ``blocks`` is ``depth`` :class:`TransformerBlock` s (self-attention,
    cross-attention to ``context`` ``(B, L, context_dim)`` with optional ``context_mask``
    ``(B, L)``, True = real token, feed-forward). The transformer runs at width
    ``num_heads * head_dim`` (``head_dim`` None: ``channels // num_heads``, i.e. the map's
    width); proj_in/proj_out are 1x1 convolutions written as Linear layers on the token
    view, and proj_out is zero-initialised so the layer starts as the identity.
    ``gated``: GEGLU feed-forward (LDM) or a GELU MLP. ``context`` None skips the
    cross-attention (the same as a fully masked context).

    ``position``: add ``position(code)`` to the tokens, ``code`` the fixed 2-D sine-cosine code
    of each token's row and column and ``position`` a zero-initialised Linear layer. Without
    it every layer here is the same at every token, so the transformer is equivariant to
    moving the map: it cannot tell a token on the left from one on the right except through
    what the convolutions before it leave at the borders, and a prompt's "to the left of"
    has nothing to attach to. Zero-initialised, the layer changes nothing until it learns,
    so a network trained without it can be warm-started with it.
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        num_heads: int = 4,
        depth: int = 1,
        ff_mult: int = 4,
        *,
        head_dim: int | None = None,
        gated: bool = True,
        groups: int = 8,
        eps: float = 1e-5,
        position: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or ff_mult < 1:
            raise ValueError(f"depth ({depth}) and ff_mult ({ff_mult}) must be >= 1")
        head_dim = head_dim or _check_heads(channels, num_heads)
        inner = num_heads * head_dim
        self.context_dim = context_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Linear(channels, inner)
        self.position = zero_init(nn.Linear(inner, inner)) if position else None
        self.blocks = nn.ModuleList(
            TransformerBlock(inner, context_dim, num_heads, head_dim, ff_mult, gated=gated)
            for _ in range(depth)
        )
        self.proj_out = zero_init(nn.Linear(inner, channels))

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        b, c, h, w = x.shape
        if context is not None and (context.ndim != 3 or context.shape[-1] != self.context_dim):
            raise ValueError(
                f"context must be (B, L, {self.context_dim}), got {tuple(context.shape)}"
            )
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, inner)
        if self.position is not None:
            code = position_code_2d(h, w, self.position.in_features).to(x.device, tokens.dtype)
            tokens = tokens + self.position(code)  # (HW, inner), the same for every image
        for block in self.blocks:
            tokens = block(tokens, context, context_mask)
        out = self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + out
