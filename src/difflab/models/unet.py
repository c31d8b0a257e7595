"""A configurable UNet for pixel-space diffusion: ``net(x, t, cond=None) -> shaped like x``.

References:
- Ronneberger et al. (2015), "U-Net: Convolutional Networks for Biomedical Image
  Segmentation": encoder, decoder and skip connections between equal resolutions.
- Ho et al. (2020), DDPM, appendix B: the PixelCNN++-style UNet with GroupNorm residual
  blocks, sinusoidal time embedding and self-attention at low resolution.
- Nichol & Dhariwal (2021), "Improved DDPM", and Dhariwal & Nichol (2021): scale-shift
  time conditioning, zero-initialised output layers, class embeddings added to the time
  embedding.
- Ho & Salimans (2022), "Classifier-Free Diffusion Guidance": one extra "null" class so the
  same network also models the unconditional distribution.
- Song et al. (2021), score SDEs: Gaussian Fourier time features, continuous ``t``.
- Rombach et al. (2022), latent diffusion: spatial transformers whose cross-attention reads
  a conditioning sequence (text-encoder tokens, or a learned class token).

Layout (for the defaults, 28x28 input)::

    conv_in -> [ResBlock]@28 (32ch) -> down -> [ResBlock]@14 (64ch) -> down
            -> middle @7 (128ch): ResBlock, self-attention, ResBlock
            -> up -> [ResBlock + skip]@14 -> up -> [ResBlock + skip]@28 -> norm, conv_out

Each entry of ``channel_mults`` is one resolution level; the last (lowest-resolution) level
is the middle block, so a 28x28 input with mults ``(1, 2, 4)`` runs at 28, 14 and 7. The
levels above it hold ``num_res_blocks`` blocks on the way down and as many on the way up;
each down block's output is a skip connection for one up block.

Conditioning (``cond``): None (unconditional); a LongTensor ``(B,)`` of class labels,
added to the time embedding (``num_classes`` is the null label of classifier-free
guidance); or a :class:`TextCondition` of context tokens for cross-attention. Levels whose
side is in ``transformer_resolutions`` get a :class:`SpatialTransformer` after each block
(in the middle: after its attention, before the second block), which cross-attends to the
context: the text tokens and/or, with ``class_context``, one learned token for the label::

    block -> [self-attention] -> SpatialTransformer(context) -> next block

Speed notes (CPU, torch 2.13, bf16 autocast): keep tensors NCHW. Channels-last makes the
convolutions faster but PyTorch's CPU GroupNorm 10-20x slower in that layout, a net
loss. Attention over the 49 middle tokens uses plain matmuls on CPU (see
``attention.attention``), which is ~9x faster than the fused CPU kernel at that size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import LinearAttention2d, SelfAttention2d, SpatialTransformer
from .blocks import ConvNeXtBlock, Downsample, ResBlock, Upsample, zero_init
from .conditioning import PooledText, TextCondition, class_labels, text_tokens, time_batch
from .embeddings import GaussianFourierFeatures, SinusoidalEmbedding, TimeMLP
from .text_refiner import TextRefiner

BLOCKS = ("resnet", "convnext")
SKIPS = ("concat", "add")
DOWNSAMPLES = ("conv", "pixel_unshuffle")
TIME_EMBEDDINGS = ("sinusoidal", "fourier")


def _bad(name: str, problem: str) -> ValueError:
    return ValueError(f"UNetConfig.{name}: {problem}")


def level_sides(image_size: int, levels: int) -> tuple[int, ...]:
    """Feature-map side at each of `levels` levels for an `image_size` input (7 -> 4)."""
    sides = [image_size]
    for _ in range(levels - 1):
        sides.append((sides[-1] + 1) // 2)  # a stride-2 conv with padding 1 rounds up
    return tuple(sides)


@dataclass
class UNetConfig:
    """Settings of :class:`UNet`; validated on creation (ValueError naming the field)."""

    # Fashion-MNIST / MNIST are grey: one channel in.
    in_channels: int = 1
    # None: predict something shaped like the input (eps, x0, v or score).
    out_channels: int | None = None
    # Side length the attention resolutions refer to. The net accepts other sizes too;
    # this only decides at which levels attention layers are built.
    image_size: int = 28
    # Cost grows with its square. 32 keeps improving over an hour of CPU training; 16
    # (ddpm-tiny-28) learns as fast per CPU-second for the first ~10 minutes and much faster
    # on a CPU without native bf16, where a 10-minute run sees few images.
    base_channels: int = 32
    # Three levels (28, 14, 7 for a 28x28 input): 7x7 keeps enough layout for the middle
    # attention to be meaningful, and doubling widths keeps FLOPs per level about equal.
    channel_mults: tuple[int, ...] = (1, 2, 4)
    # One block per level: on a CPU budget, width and attention buy more than depth.
    num_res_blocks: int = 1
    # Feature-map sides with full self-attention. The middle block always has attention;
    # 7 is the default input's middle level (49 tokens: cheap, and global at that scale).
    attention_resolutions: tuple[int, ...] = (7,)
    # Feature-map sides with linear attention instead (affordable at 14 or 28).
    linear_attention_resolutions: tuple[int, ...] = ()
    # "resnet" (DDPM's GroupNorm ResBlock) or "convnext" (depthwise 7x7 + MLP).
    block: str = "resnet"
    # "concat" (UNet/DDPM: the decoder sees the encoder features whole) or "add" (cheaper:
    # fewer input channels to the decoder blocks).
    skip: str = "concat"
    # "conv": 3x3 stride 2 (DDPM); "pixel_unshuffle": 2x2 fold + 1x1 conv.
    downsample: str = "conv"
    # 0: small datasets trained for minutes do not overfit; DDPM used 0.1 on CIFAR-10.
    dropout: float = 0.0
    # Heads of full self-attention; 128 channels / 4 heads = 32 per head.
    num_heads: int = 4
    # GroupNorm groups; must divide every level's width. 8 keeps >= 4 channels per group
    # at base width 32.
    groups: int = 8
    # GroupNorm epsilon (PyTorch's default).
    norm_eps: float = 1e-5
    # "sinusoidal" (DDPM, any float t) or "fourier" (random features, for t in [0, 1]).
    time_embedding: str = "sinusoidal"
    # Size of the fixed sinusoidal/Fourier code of t; None: base_channels (DDPM).
    time_features: int | None = None
    # Width of the time-embedding MLP and of the embedding each block sees (None: 4 *
    # base_channels, as DDPM). 256 rather than 128: it carries time and class, and it is
    # computed once per image, not per pixel, so it adds ~0.17 M parameters and no
    # measurable time.
    time_embed_dim: int | None = 256
    # t is multiplied by this before the embedding: 1 for step indices in [0, T); 1000 for
    # continuous t in [0, 1] with a sinusoidal embedding, so it looks like DDPM steps.
    time_scale: float = 1.0
    # Std of the Fourier frequencies; 16 suits t in [0, 1] (Song et al. use 16-30).
    fourier_scale: float = 16.0
    # Class-conditional when set: labels 0..num_classes-1, and num_classes itself is the
    # "null" label used for classifier-free guidance (and when cond is None).
    num_classes: int | None = None
    # Feature-map sides with a SpatialTransformer (self-attention, cross-attention to the
    # context, feed-forward; LDM) after every block of that level, and in the middle block
    # (after its attention) when the middle's side is listed. It comes in addition to any
    # attention configured for the side, which runs first; as the transformer has its own
    # self-attention, a side is usually listed in one or the other. Needs a context
    # (context_dim and/or class_context). Empty: no transformers (all older presets).
    transformer_resolutions: tuple[int, ...] = ()
    # The spatial transformers add a fixed 2-D sine-cosine code of each token's row and
    # column (through a zero-initialised projection) to their tokens, so cross-attention
    # knows where a token lies: what "to the left of" or "above" in a prompt needs. False:
    # they see position only through the convolutions' borders (LDM; all older presets).
    transformer_position: bool = False
    # Transformer layers per SpatialTransformer; 1, as LDM's small models.
    transformer_depth: int = 1
    # Width of a transformer head; None: the level width / num_heads, so the transformer
    # runs at the level's width. Set it (LDM's d_head) to run narrower, cheaper
    # transformers: width num_heads * transformer_head_dim.
    transformer_head_dim: int | None = None
    # Hidden width of the transformers' GEGLU feed-forward over their width; 4 as LDM,
    # 2 halves the largest part of a transformer's parameters.
    transformer_ff_mult: int = 4
    # Width of the context tokens that TextCondition carries (e.g. 384 for
    # all-MiniLM-L6-v2), and of the class token. None: no text input.
    context_dim: int | None = None
    # With num_classes: the label is ALSO given to the transformers as one learned context
    # token (label num_classes: a learned null token), as the score-SDE write-up's
    # spatial-transformer UNet does; the label still enters the time embedding too. The
    # token is context_dim wide (it is appended to text tokens), or time_embed_dim wide
    # when there is no text. Alone, one token makes cross-attention a per-class bias at
    # every position (softmax over one key is 1): its q/k weights then get no gradient.
    class_context: bool = False
    # The text's pooled token (the first TextCondition token: a sentence embedding) is
    # also added to the time embedding through a small MLP, so every block sees the whole
    # sentence, not only the positions that cross-attend to it (Imagen, SDXL). Needs
    # context_dim. False: text reaches the net through cross-attention alone.
    pooled_text: bool = False
    # Trainable transformer layers (difflab.models.text_refiner) that re-read the text
    # tokens before the spatial transformers do, so a frozen encoder's word states can be
    # regrouped per object ("red" with "circle"). 0: the encoder's states as they are.
    text_layers: int = 0
    # Width those layers run at (a linear map from context_dim first); None: context_dim.
    # The transformers' cross-attention then reads tokens this wide.
    text_width: int | None = None
    # Scale-shift (FiLM) time conditioning (improved DDPM) rather than an added bias.
    scale_shift: bool = True
    # Whether the middle block has attention (score-SDE's small ScoreNet has none).
    mid_attention: bool = True
    # ConvNeXt inverted-bottleneck expansion; 2 rather than ConvNeXt's 4 to stay small.
    convnext_mult: int = 2

    def __post_init__(self) -> None:
        for name in (
            "channel_mults",
            "attention_resolutions",
            "linear_attention_resolutions",
            "transformer_resolutions",
        ):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,)
            try:
                value = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                raise _bad(name, f"expected a sequence of integers, got {value!r}") from None
            setattr(self, name, value)
        self._validate()

    @property
    def level_sides(self) -> tuple[int, ...]:
        """Feature-map side at each level for an ``image_size`` input (7 -> 4: rounds up)."""
        return level_sides(self.image_size, len(self.channel_mults))

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    def _validate(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _bad(name, f"must be a positive integer, got {value!r}")

        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks"):
            positive(name)
        for name in ("num_heads", "groups", "convnext_mult"):
            positive(name)
        positive("transformer_depth")
        positive("transformer_ff_mult")
        for name in ("out_channels", "time_features", "time_embed_dim", "num_classes"):
            positive(name, allow_none=True)
        for name in ("context_dim", "transformer_head_dim", "text_width"):
            positive(name, allow_none=True)
        layers = self.text_layers
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
            raise _bad("text_layers", f"must be an integer >= 0, got {layers!r}")
        for name, allowed in (
            ("block", BLOCKS),
            ("skip", SKIPS),
            ("downsample", DOWNSAMPLES),
            ("time_embedding", TIME_EMBEDDINGS),
        ):
            if getattr(self, name) not in allowed:
                raise _bad(name, f"got {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise _bad(
                "channel_mults", f"need one or more positive integers, got {self.channel_mults}"
            )
        for name in ("dropout", "norm_eps", "time_scale", "fourier_scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _bad(name, f"must be a number, got {value!r}")
        for name in ("scale_shift", "mid_attention", "class_context", "pooled_text",
                     "transformer_position"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, f"must be true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise _bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0:
            raise _bad("norm_eps", f"must be > 0, got {self.norm_eps}")
        if not self.time_scale > 0:
            raise _bad("time_scale", f"must be > 0, got {self.time_scale}")
        if not self.fourier_scale > 0:
            raise _bad("fourier_scale", f"must be > 0, got {self.fourier_scale}")
        features = self.time_features or self.base_channels
        if features < 2 or (self.time_embedding == "fourier" and features % 2):
            raise _bad("time_features", f"needs an even size >= 2, got {features}")
        if self.class_context and self.num_classes is None:
            raise _bad("class_context", "needs num_classes (the labels to make tokens of)")
        if self.pooled_text and self.context_dim is None:
            raise _bad("pooled_text", "needs context_dim (the width of the text tokens)")
        if self.text_layers and self.context_dim is None:
            raise _bad("text_layers", "needs context_dim (the width of the text tokens)")
        if self.text_width is not None and not self.text_layers:
            raise _bad("text_width", "is the width of the text layers: set text_layers >= 1")
        head = self.text_head_dim
        if self.text_layers and (self.text_width or self.context_dim) % head:
            raise _bad(
                "text_width",
                f"{self.text_width or self.context_dim} is not a multiple of the head width "
                f"{head} (transformer_head_dim, or 32)",
            )
        has_context = self.context_dim is not None or self.class_context
        if self.transformer_resolutions and not has_context:
            raise _bad(
                "transformer_resolutions",
                "spatial transformers need a context: set context_dim (text tokens) "
                "and/or class_context=True with num_classes",
            )
        if self.transformer_position and not self.transformer_resolutions:
            raise _bad("transformer_position", "needs spatial transformers "
                       "(transformer_resolutions) to add the position code to")
        if has_context and not self.transformer_resolutions:
            name = "context_dim" if self.context_dim is not None else "class_context"
            raise _bad(
                name,
                "the context is read only by spatial transformers; list sides in "
                f"transformer_resolutions (allowed: {sorted(set(self.level_sides))})",
            )

        for width in self.channels:
            if width % self.groups:
                raise _bad(
                    "groups",
                    f"{self.groups} does not divide the level width {width} "
                    f"(base_channels * channel_mults = {self.channels})",
                )

        sides = self.level_sides
        for name in (
            "attention_resolutions",
            "linear_attention_resolutions",
            "transformer_resolutions",
        ):
            unknown = sorted(set(getattr(self, name)) - set(sides))
            if unknown:
                raise _bad(
                    name,
                    f"{unknown} is not a feature-map side of a {self.image_size}x"
                    f"{self.image_size} input; allowed: {sorted(set(sides))}",
                )
        both = set(self.attention_resolutions) & set(self.linear_attention_resolutions)
        if both:
            raise _bad(
                "linear_attention_resolutions",
                f"{sorted(both)} also listed in "
                "attention_resolutions; choose one kind per resolution",
            )
        for i, (side, width) in enumerate(zip(sides, self.channels, strict=True)):
            attn = self.attention_kind(side, middle=i == len(sides) - 1)
            needs_split = attn == "full" or (
                side in self.transformer_resolutions and self.transformer_head_dim is None
            )
            if needs_split and width % self.num_heads:
                raise _bad(
                    "num_heads",
                    f"{self.num_heads} does not divide the width {width} at side {side}",
                )

    @property
    def text_head_dim(self) -> int:
        """Head width of the text layers: the transformers' own, or 32."""
        return self.transformer_head_dim or 32

    @property
    def context_width(self) -> int | None:
        """Width of the context tokens the transformers read (None: no transformers)."""
        if self.context_dim is not None:
            return (self.text_width or self.context_dim) if self.text_layers else self.context_dim
        if self.class_context:
            return self.time_embed_dim or 4 * self.base_channels
        return None

    def attention_kind(self, side: int, middle: bool = False) -> str | None:
        """Which attention runs at a level of this side: "full", "linear" or None."""
        if middle and not self.mid_attention:
            return None
        if side in self.linear_attention_resolutions:
            return "linear"
        if middle or side in self.attention_resolutions:
            return "full"
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict (tuples as lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build from a dict (e.g. loaded TOML/JSON); unknown keys are an error."""
        allowed = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"UNetConfig: unknown key(s) {unknown}; allowed: {allowed}")
        return cls(**data)


class _Stage(nn.Module):
    """One block, optional attention (Identity when there is none), optional transformer."""

    def __init__(
        self, block: nn.Module, attn: nn.Module, transformer: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.block = block
        self.attn = attn
        # None adds no state_dict key: stages without one load pre-transformer checkpoints.
        self.transformer = transformer

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        x = self.attn(self.block(x, emb))
        if self.transformer is not None:
            x = self.transformer(x, context, mask)
        return x


class UNet(nn.Module):
    """Configurable diffusion UNet; see the module docstring for the layout.

    ``forward(x, t, cond=None)``: ``x`` ``(B, C, H, W)``; ``t`` float ``(B,)`` or a scalar
    (step index or continuous time, scaled by ``config.time_scale``); ``cond`` one of:
    None (unconditional: null label, null class token, no text); a LongTensor ``(B,)`` of
    class labels for a class-conditional net (``num_classes`` = null label); a
    :class:`TextCondition` (tokens, padding mask, optional labels) for a net with
    ``context_dim``. Returns a tensor shaped like ``x`` (with ``out_channels``).
    """

    # Convolutions and attention over any grid: it takes crops of its image size too.
    takes_any_size = True

    def __init__(self, config: UNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or UNetConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        c = config
        widths = c.channels
        sides = c.level_sides
        emb_dim = c.time_embed_dim or 4 * c.base_channels
        features = c.time_features or c.base_channels

        if c.time_embedding == "sinusoidal":
            code: nn.Module = SinusoidalEmbedding(features)
        else:
            code = GaussianFourierFeatures(features, scale=c.fourier_scale)
        self.time_embed = TimeMLP(code, features, emb_dim)
        # Row num_classes is the null label of classifier-free guidance.
        self.class_embed = (
            nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes is not None else None
        )

        def block(cin: int, cout: int) -> nn.Module:
            if c.block == "convnext":
                return ConvNeXtBlock(cin, cout, emb_dim, mult=c.convnext_mult, dropout=c.dropout)
            return ResBlock(
                cin,
                cout,
                emb_dim,
                dropout=c.dropout,
                groups=c.groups,
                eps=c.norm_eps,
                scale_shift=c.scale_shift,
            )

        def attention(width: int, kind: str | None) -> nn.Module:
            if kind == "full":
                return SelfAttention2d(width, c.num_heads, groups=c.groups, eps=c.norm_eps)
            if kind == "linear":
                return LinearAttention2d(width, c.num_heads, groups=c.groups, eps=c.norm_eps)
            return nn.Identity()

        def transformer(width: int, side: int) -> nn.Module | None:
            if side not in c.transformer_resolutions:
                return None
            return SpatialTransformer(
                width,
                c.context_width,
                c.num_heads,
                c.transformer_depth,
                c.transformer_ff_mult,
                head_dim=c.transformer_head_dim,
                groups=c.groups,
                eps=c.norm_eps,
                position=c.transformer_position,
            )

        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)

        # Encoder: every level but the last; each stage's output is a skip connection.
        self.down_stages = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for width, nxt, side in zip(widths[:-1], widths[1:], sides[:-1], strict=True):
            kind = c.attention_kind(side)
            self.down_stages.append(
                nn.ModuleList(
                    _Stage(block(width, width), attention(width, kind), transformer(width, side))
                    for _ in range(c.num_res_blocks)
                )
            )
            self.downsamplers.append(Downsample(width, nxt, c.downsample))

        mid = widths[-1]
        self.mid_block1 = block(mid, mid)
        self.mid_attn = attention(mid, c.attention_kind(sides[-1], middle=True))
        self.mid_transformer = transformer(mid, sides[-1])
        self.mid_block2 = block(mid, mid)

        # Decoder: mirror of the encoder, deepest level first. Upsample also maps the width
        # back, so skips of a level all have that level's width and "add" needs no
        # projections.
        skip_factor = 2 if c.skip == "concat" else 1
        self.upsamplers = nn.ModuleList()
        self.up_stages = nn.ModuleList()
        for width, below, side in reversed(
            list(zip(widths[:-1], widths[1:], sides[:-1], strict=True))
        ):
            kind = c.attention_kind(side)
            self.upsamplers.append(Upsample(below, width))
            self.up_stages.append(
                nn.ModuleList(
                    _Stage(
                        block(skip_factor * width, width),
                        attention(width, kind),
                        transformer(width, side),
                    )
                    for _ in range(c.num_res_blocks)
                )
            )

        self.norm_out = nn.GroupNorm(c.groups, widths[0], eps=c.norm_eps)
        # Zero-init: the untrained net predicts 0, the mean of eps, a sane starting point.
        self.conv_out = zero_init(
            nn.Conv2d(widths[0], c.out_channels or c.in_channels, 3, padding=1)
        )
        # Created last, so the parameters above draw the same random numbers as without it.
        # Row num_classes is the learned null token.
        self.class_token = (
            nn.Embedding(c.num_classes + 1, c.context_width) if c.class_context else None
        )
        self.pooled_text = PooledText(c.context_dim, emb_dim) if c.pooled_text else None
        self.text_refiner = (
            TextRefiner(c.context_dim, c.context_width, c.text_layers, c.text_head_dim)
            if c.text_layers
            else None
        )

    @classmethod
    def from_config(cls, data: dict[str, Any] | UNetConfig) -> UNet:
        config = data if isinstance(data, UNetConfig) else UNetConfig.from_dict(data)
        return cls(config)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def embed(
        self, t: Tensor | float, cond: Tensor | None, batch: int, device: torch.device
    ) -> Tensor:
        """Time (+ class) embedding ``(B, emb_dim)`` that every block receives."""
        # float32 maths for the code of t, even under autocast (see sinusoidal_embedding).
        emb = self.time_embed(time_batch(t, batch, device) * self.config.time_scale)
        cond = class_labels(cond, self.config.num_classes, batch, device, "UNet")
        if cond is None:
            return emb
        return emb + self.class_embed(cond)

    def context(
        self, text: Tensor | None, mask: Tensor | None, labels: Tensor | None, batch: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """Context tokens ``(B, L, context_width)`` and mask ``(B, L)`` (or None) for the
        transformers: the (checked) text tokens and their mask, then the class token."""
        if self.class_token is None:
            return text, mask
        token = self.class_token(labels)[:, None, :]  # (B, 1, context_width)
        if text is None:
            return token, None
        if mask is not None:  # the class token is always real
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        return torch.cat([text, token.to(text.dtype)], dim=1), mask

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Tensor | TextCondition | None = None
    ) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        labels, text, mask = cond, None, None
        if isinstance(cond, TextCondition):
            text, mask = text_tokens(cond, self.config.context_dim, batch, "UNet")
            labels = cond.labels
        if labels is None and self.config.num_classes is not None:
            labels = torch.full((batch,), self.config.num_classes, device=x.device)
        emb = self.embed(t, labels, batch, x.device)  # validates the labels
        if self.pooled_text is not None:
            emb = emb + self.pooled_text(text, mask, batch).to(emb.dtype)
        if self.text_refiner is not None and text is not None:
            text = self.text_refiner(text, mask)
        context, mask = self.context(text, mask, labels, batch)

        h = self.conv_in(x)
        skips = []
        for stages, down in zip(self.down_stages, self.downsamplers, strict=True):
            for stage in stages:
                h = stage(h, emb, context, mask)
                skips.append(h)
            h = down(h)

        h = self.mid_attn(self.mid_block1(h, emb))
        if self.mid_transformer is not None:
            h = self.mid_transformer(h, context, mask)
        h = self.mid_block2(h, emb)

        for up, stages in zip(self.upsamplers, self.up_stages, strict=True):
            # Upsample to the skip's exact size: undoes a rounded-up downsampling (4 -> 7).
            h = up(h, size=skips[-1].shape[-2:])
            for stage in stages:
                skip = skips.pop()
                h = torch.cat([h, skip], dim=1) if self.config.skip == "concat" else h + skip
                h = stage(h, emb, context, mask)

        return self.conv_out(F.silu(self.norm_out(h)))
