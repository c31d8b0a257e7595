"""Denoising networks. Every network is ``net(x, t, cond=None) -> tensor shaped like x``.

``t`` is a float tensor ``(B,)`` (or a scalar) holding a step index or a continuous time;
``cond`` is an optional LongTensor ``(B,)`` of class labels. What the output means (noise,
x0, v or score) is a setting of the diffusion process, not of the network.
"""

from .article_unet import ArticleUNet
from .attention import (
    CrossAttention,
    LinearAttention2d,
    SelfAttention2d,
    SpatialTransformer,
    attention,
)
from .blocks import ConvNeXtBlock, Downsample, LayerNorm2d, ResBlock, Upsample
from .conditioning import TextCondition
from .embeddings import (
    GaussianFourierFeatures,
    SinusoidalEmbedding,
    SinusoidalTable,
    TimeMLP,
    sinusoidal_embedding,
)
from .presets import PRESETS, get_preset, preset_config
from .unet import UNet, UNetConfig
from .utils import count_parameters, estimate_flops

__all__ = [
    "PRESETS",
    "ArticleUNet",
    "ConvNeXtBlock",
    "CrossAttention",
    "Downsample",
    "GaussianFourierFeatures",
    "LayerNorm2d",
    "LinearAttention2d",
    "ResBlock",
    "SelfAttention2d",
    "SinusoidalEmbedding",
    "SinusoidalTable",
    "SpatialTransformer",
    "TextCondition",
    "TimeMLP",
    "UNet",
    "UNetConfig",
    "Upsample",
    "attention",
    "count_parameters",
    "estimate_flops",
    "get_preset",
    "preset_config",
    "sinusoidal_embedding",
]
