"""A DiT-style transformer backbone: ``net(x, t, cond=None) -> shaped like x``.

An alternative to the UNet for pixel models (28x28x1) and latent models (e.g. 7x7x4
autoencoder latents) alike: the image is cut into patches, each patch becomes one token,
and a stack of transformer blocks conditioned on the noise level (and class) mixes them.

References:
- Peebles & Xie (2023), "Scalable Diffusion Models with Transformers" (DiT): patchify with
  a ``patch x patch`` stride-``patch`` convolution, fixed 2-D sine-cosine position
  embeddings, and adaLN-Zero blocks: the conditioning vector ``c`` (time embedding + class
  embedding) regresses a shift, scale and gate for the self-attention and for the MLP;
  that regression and the final layer start at zero, so every block starts as the
  identity and the untrained net predicts 0.
- Vaswani et al. (2017), "Attention Is All You Need": multi-head attention, the MLP, the
  sine-cosine code that the 2-D position embedding applies to rows and columns.
- Rombach et al. (2022), latent diffusion: cross-attention from image tokens to a
  conditioning sequence (text-encoder tokens). Placing it, unmodulated, between the
  self-attention and the MLP of a DiT block follows Chen et al. (2023), PixArt-alpha.
- Ho & Salimans (2022), "Classifier-Free Diffusion Guidance": one extra "null" class.

Layout (``dit-s-28``: 28x28x1 input, patch 2, width 192)::

    x (B, 1, 28, 28) -> conv 2x2/2 -> 196 tokens (B, 196, 192) + position code
      -> depth x [adaLN self-attention -> (cross-attention) -> adaLN MLP]
      -> adaLN LayerNorm -> Linear (zero-init) to 2*2*1 values per token -> (B, 1, 28, 28)

Conditioning follows :class:`~difflab.models.unet.UNet` exactly: ``cond`` is None, a
LongTensor ``(B,)`` of class labels (``num_classes`` is the null label), or a
:class:`~difflab.models.unet.TextCondition` whose tokens the blocks cross-attend to (a row
whose mask is all False attends to nothing: the same output as no text at all).

Cost grows with the number of tokens, ``(image_size / patch_size)^2``: patch 2 on 28x28 is
196 tokens, patch 4 is 49 (4x cheaper, coarser). Attention over up to 256 tokens uses plain
matmuls on CPU (see :func:`~difflab.models.attention.attention`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossAttention, FeedForward
from .blocks import zero_init
from .conditioning import PooledText, TextCondition, class_labels, text_tokens, time_batch
from .embeddings import (
    GaussianFourierFeatures,
    SinusoidalEmbedding,
    TimeMLP,
    position_embedding_2d,
)

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
# Size of the fixed sinusoidal/Fourier code of t before the time MLP (DiT's
# frequency_embedding_size); the MLP maps it to the model width.
TIME_FEATURES = 256


def _bad(name: str, problem: str) -> ValueError:
    return ValueError(f"DiTConfig.{name}: {problem}")


@dataclass
class DiTConfig:
    """Settings of :class:`DiT`; validated on creation (ValueError naming the field)."""

    # Fashion-MNIST / MNIST are grey: one channel in (4 for the autoencoder's latents).
    in_channels: int = 1
    # None: predict something shaped like the input (eps, x0, v or score).
    out_channels: int | None = None
    # Side of the (square) input; the net takes only this size, as the position code and
    # the token count are fixed by it.
    image_size: int = 28
    # Side of a patch (one token). Must divide image_size: 2 or 4 for 28x28 images (196 or
    # 49 tokens), 1 or 7 for 7x7 latents. Smaller patches cost more and give better
    # samples (DiT, section 4).
    patch_size: int = 2
    # Token width. 192 is DiT-S's 384 halved: enough for 28x28 grey images on a CPU budget.
    width: int = 192
    # Transformer blocks. 6 rather than DiT-S's 12, for the same budget reason.
    depth: int = 6
    # Attention heads; must divide width. 3 heads of 64, DiT's head width.
    num_heads: int = 3
    # Hidden width of the MLP over the width (ViT/DiT's 4).
    mlp_ratio: float = 4.0
    # Class-conditional when set: labels 0..num_classes-1, and num_classes itself is the
    # "null" label used for classifier-free guidance (and when cond is None).
    num_classes: int | None = None
    # Width of the TextCondition tokens (e.g. 384 for all-MiniLM-L6-v2): every block then
    # cross-attends to them. None: no text input, no cross-attention layers.
    context_dim: int | None = None
    # The text's pooled token is also added to the adaLN conditioning vector (time +
    # class), as in UNetConfig.pooled_text. Needs context_dim.
    pooled_text: bool = False
    # "sinusoidal" (DDPM, any float t) or "fourier" (random features, for t in [0, 1]).
    time_embedding: str = "sinusoidal"
    # t is multiplied by this before the embedding, as in UNetConfig: 1 for step indices
    # in [0, T); 1000 for continuous t in [0, 1] with a sinusoidal embedding.
    time_scale: float = 1.0
    # Std of the Fourier frequencies (time_embedding "fourier" only); 16 suits t in [0, 1].
    fourier_scale: float = 16.0

    def __post_init__(self) -> None:
        self._validate()

    @property
    def grid(self) -> int:
        """Tokens per side: ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    def _validate(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _bad(name, f"must be a positive integer, got {value!r}")

        for name in ("in_channels", "image_size", "patch_size", "width", "depth", "num_heads"):
            positive(name)
        for name in ("out_channels", "num_classes", "context_dim"):
            positive(name, allow_none=True)
        for name in ("mlp_ratio", "time_scale", "fourier_scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise _bad(name, f"must be a number > 0, got {value!r}")
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise _bad(
                "time_embedding",
                f"got {self.time_embedding!r}; allowed: {', '.join(TIME_EMBEDDINGS)}",
            )
        if self.image_size % self.patch_size:
            divisors = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            raise _bad(
                "patch_size",
                f"{self.patch_size} does not divide image_size {self.image_size}; "
                f"allowed: {divisors}",
            )
        if not isinstance(self.pooled_text, bool):
            raise _bad("pooled_text", f"must be true or false, got {self.pooled_text!r}")
        if self.pooled_text and self.context_dim is None:
            raise _bad("pooled_text", "needs context_dim (the width of the text tokens)")
        if self.width < 4:
            raise _bad("width", f"must be >= 4 (2-D position code), got {self.width}")
        if self.width % self.num_heads:
            raise _bad("num_heads", f"{self.num_heads} does not divide width {self.width}")
        if int(self.width * self.mlp_ratio) < 1:
            raise _bad("mlp_ratio", f"width * mlp_ratio must be >= 1, got {self.mlp_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        """Build from a dict (e.g. loaded TOML/JSON); unknown keys are an error."""
        allowed = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"DiTConfig: unknown key(s) {unknown}; allowed: {allowed}")
        return cls(**data)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` for tokens ``(B, N, D)`` and ``(B, 1, D)`` codes."""
    return x * (1 + scale) + shift


# ------------------------------------------------------------------------- the network


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block on tokens ``(B, N, width)``.

    ``x + gate1 * attn(modulate(norm(x)))``, then (with a context) ``x + cross(norm(x),
    context)``, then ``x + gate2 * mlp(modulate(norm(x)))``. The six modulation vectors come
    from one zero-initialised Linear of the conditioning, so the block starts as the
    identity; the cross-attention's output projection is zero-initialised too.
    """

    def __init__(
        self, width: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None
    ) -> None:
        super().__init__()
        # No affine parameters: adaLN supplies the scale and shift (DiT).
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = CrossAttention(width, None, num_heads, zero_out=False)  # self-attention
        self.norm_cross = nn.LayerNorm(width, eps=1e-6) if context_dim is not None else None
        self.cross_attn = (
            CrossAttention(width, context_dim, num_heads) if context_dim is not None else None
        )
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(width, mlp_ratio, gated=False)
        # adaLN-Zero: shift, scale, gate for attention and for the MLP, all zero at init.
        self.modulation = zero_init(nn.Linear(width, 6 * width))

    def forward(
        self, x: Tensor, c: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        # c: SiLU of the conditioning vector, (B, width).
        mods = self.modulation(c)[:, None, :].chunk(6, dim=-1)  # 6 x (B, 1, width)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross_attn is not None and context is not None:
            # Fully masked rows get exactly zero here (CrossAttention), i.e. "no text".
            x = x + self.cross_attn(self.norm_cross(x), context, mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Diffusion transformer; see the module docstring for the layout.

    ``forward(x, t, cond=None)``: ``x`` ``(B, in_channels, image_size, image_size)``; ``t``
    float ``(B,)`` or a scalar (step index or continuous time, scaled by
    ``config.time_scale``); ``cond`` one of: None (unconditional: null label, no text); a
    LongTensor ``(B,)`` of class labels for a class-conditional net (``num_classes`` = null
    label); a :class:`TextCondition` (tokens, padding mask, optional labels) for a net with
    ``context_dim``. Returns ``(B, out_channels or in_channels, image_size, image_size)``.
    """

    # A fixed grid of patches: only its own image size (relation regions need crops).
    takes_any_size = False

    def __init__(self, config: DiTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or DiTConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        c = config
        p = c.patch_size
        self.out_channels = c.out_channels or c.in_channels

        self.patch_embed = nn.Conv2d(c.in_channels, c.width, p, stride=p)
        # Fixed, so not in the state dict: recomputed from (grid, width).
        self.register_buffer(
            "pos_embed", position_embedding_2d(c.grid, c.width)[None], persistent=False
        )  # (1, N, width)

        if c.time_embedding == "sinusoidal":
            code: nn.Module = SinusoidalEmbedding(TIME_FEATURES)
        else:
            code = GaussianFourierFeatures(TIME_FEATURES, scale=c.fourier_scale)
        self.time_embed = TimeMLP(code, TIME_FEATURES, c.width)
        # Row num_classes is the null label of classifier-free guidance.
        self.class_embed = (
            nn.Embedding(c.num_classes + 1, c.width) if c.num_classes is not None else None
        )

        self.blocks = nn.ModuleList(
            DiTBlock(c.width, c.num_heads, c.mlp_ratio, c.context_dim) for _ in range(c.depth)
        )

        self.norm_out = nn.LayerNorm(c.width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(c.width, 2 * c.width)  # shift, scale
        self.proj_out = nn.Linear(c.width, p * p * self.out_channels)
        self._init_weights()
        # After the init above, which would overwrite its zero last layer.
        self.pooled_text = PooledText(c.context_dim, c.width) if c.pooled_text else None

    def _init_weights(self) -> None:
        # DiT's initialisation (after ViT): Xavier-uniform linears with zero biases, the
        # patch convolution as the linear layer it is, N(0, 0.02) class and time embeddings.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for layer in self.time_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: every block and the output start at zero, so the net is the identity
        # on its residual stream and predicts 0 (the mean of eps) before training.
        for block in self.blocks:
            zero_init(block.modulation)
            if block.cross_attn is not None:
                zero_init(block.cross_attn.to_out)
        zero_init(self.modulation_out)
        zero_init(self.proj_out)

    @classmethod
    def from_config(cls, data: dict[str, Any] | DiTConfig) -> DiT:
        config = data if isinstance(data, DiTConfig) else DiTConfig.from_dict(data)
        return cls(config)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def embed(
        self, t: Tensor | float, labels: Tensor | None, batch: int, device: torch.device
    ) -> Tensor:
        """Conditioning vector ``c`` ``(B, width)``: time embedding (+ class embedding)."""
        # float32 maths for the code of t, even under autocast (see sinusoidal_embedding).
        emb = self.time_embed(time_batch(t, batch, device) * self.config.time_scale)
        labels = class_labels(labels, self.config.num_classes, batch, device, "DiT")
        if labels is not None:
            emb = emb + self.class_embed(labels)
        return emb

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> tokens ``(B, N, width)`` with the position code added."""
        h = self.patch_embed(x)  # (B, width, H/p, W/p)
        return h.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, width)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """``(B, N, p*p*C)`` -> ``(B, C, H, W)``: each token's values fill its patch."""
        b, p, g, ch = tokens.shape[0], self.config.patch_size, self.config.grid, self.out_channels
        x = tokens.reshape(b, g, g, p, p, ch)  # (B, gh, gw, p, p, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(b, ch, g * p, g * p)  # (B, C, H, W)

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Tensor | TextCondition | None = None
    ) -> Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or x.shape[-2:] != (c.image_size,) * 2:
            raise ValueError(
                f"x must be (B, {c.in_channels}, {c.image_size}, {c.image_size}) "
                f"(DiTConfig.in_channels, image_size), got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        context, mask, labels = None, None, cond
        if isinstance(cond, TextCondition):
            context, mask = text_tokens(cond, c.context_dim, batch, "DiT")
            labels = cond.labels
        emb = self.embed(t, labels, batch, x.device)
        if self.pooled_text is not None:
            emb = emb + self.pooled_text(context, mask, batch).to(emb.dtype)
        cvec = F.silu(emb)  # (B, width), shared by all blocks

        h = self.patchify(x)  # (B, N, width)
        for block in self.blocks:
            h = block(h, cvec, context, mask)
        shift, scale = self.modulation_out(cvec)[:, None, :].chunk(2, dim=-1)  # (B, 1, width)
        h = self.proj_out(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        return self.unpatchify(h)


# ------------------------------------------------------------------------------ presets

DIT_PRESETS: dict[str, DiTConfig] = {
    # Pixel model, DiT-S/2-like at half width and depth: 196 tokens of 2x2 pixels.
    "dit-s-28": DiTConfig(),
    # The same with 4x4 patches: 49 tokens, about 4x cheaper, coarser detail.
    "dit-s4-28": DiTConfig(patch_size=4),
    # Latent model on the autoencoder's 7x7x4 latents: one token per latent pixel (49),
    # cross-attending to all-MiniLM-L6-v2's 384-d token embeddings (text-to-image).
    # dataclasses.replace(..., context_dim=None) gives the unconditional latent model.
    "dit-latent-7": DiTConfig(in_channels=4, image_size=7, patch_size=1, context_dim=384),
}
