"""Convolutional building blocks of the UNet: residual blocks and resolution changes.

References:
- He et al. (2016), "Identity Mappings in Deep Residual Networks": pre-activation residual
  blocks (norm -> activation -> conv).
- Wu & He (2018), "Group Normalization": batch-size-independent normalisation.
- Ho et al. (2020), DDPM: the time embedding is added inside every residual block.
- Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", and
  Dhariwal & Nichol (2021), "Diffusion Models Beat GANs": the embedding as a scale and
  shift of the normalised activations (FiLM, Perez et al. 2018), zero-initialised last
  convolution so each block starts as the identity.
- Liu et al. (2022), "A ConvNet for the 2020s": the ConvNeXt block (depthwise 7x7 conv,
  norm, inverted-bottleneck MLP).
- Shi et al. (2016), "Real-Time Single Image and Video Super-Resolution Using an Efficient
  Sub-Pixel Convolutional Neural Network": pixel (un)shuffle.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(B, C, H, W)`` map, as ConvNeXt uses it."""

    def forward(self, x: Tensor) -> Tensor:
        # Normalise over C only: move C last, which is free for channels-last tensors.
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class ResBlock(nn.Module):
    """Pre-activation residual block with the time (+ class) embedding injected.

    ``x -> GroupNorm -> SiLU -> conv3x3 -> [embedding] -> GroupNorm -> SiLU -> dropout ->
    conv3x3 (zero-init)``, plus a 1x1 projection of ``x`` when the channel count changes.

    With ``scale_shift=True`` the embedding gives a per-channel ``(scale, shift)`` applied
    after the second norm, ``h = norm(h) * (1 + scale) + shift`` (improved DDPM); with
    ``False`` it is added before the norm (original DDPM). Scale-shift can modulate, not
    only offset, each channel for each noise level, and costs one wider Linear.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        dropout: float = 0.0,
        groups: int = 8,
        eps: float = 1e-5,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        # Zero-init: the block is the identity at the start, which keeps deep UNets stable
        # and lets the skip path carry the signal until the block has learnt something.
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block with the time (+ class) embedding as scale and shift after the norm.

    ``x -> depthwise conv7x7 -> LayerNorm (channels) -> [embedding] -> 1x1 (expand by
    ``mult``) -> GELU -> dropout -> 1x1 (zero-init)``, plus a 1x1 projection of ``x`` when
    the channel count changes. The large depthwise kernel mixes space cheaply and the 1x1
    MLP mixes channels, so it costs fewer FLOPs than a ResBlock's two dense 3x3 convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        mult: int = 2,
        dropout: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(in_channels, in_channels, 7, padding=3, groups=in_channels)
        self.norm = LayerNorm2d(in_channels, eps=eps)
        self.emb_proj = nn.Linear(emb_dim, 2 * in_channels)
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels, out_channels * mult, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            # Zero-init for the same reason as ResBlock.conv2: start as the identity.
            zero_init(nn.Conv2d(out_channels * mult, out_channels, 1)),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.norm(self.dwconv(x))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + scale) + shift
        return self.skip(x) + self.mlp(h)


class Downsample(nn.Module):
    """Halve the spatial size (rounding up: 7 -> 4) and map ``in -> out`` channels.

    ``mode="conv"``: a 3x3 convolution with stride 2 (DDPM). ``mode="pixel_unshuffle"``:
    fold each 2x2 patch into channels and mix with a 1x1 conv, a lossless rearrangement
    that costs about half the FLOPs; odd sizes are zero-padded on the bottom/right first.
    """

    MODES = ("conv", "pixel_unshuffle")

    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"downsample mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode == "conv":
            self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        else:
            self.proj = nn.Conv2d(4 * in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "conv":
            return self.proj(x)
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        return self.proj(F.pixel_unshuffle(x, 2))  # (B, 4C, H/2, W/2) -> (B, out, ...)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling then a 3x3 conv mapping ``in -> out`` channels.

    Nearest + conv rather than a transposed conv avoids checkerboard artefacts (Odena et
    al. 2016). Pass ``size`` (the skip connection's spatial size) to undo a rounded-up
    downsampling exactly: 4 -> 7, not 8.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
