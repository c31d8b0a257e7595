"""The small 28x28 UNet of the Fashion-MNIST DDPM article, rebuilt from its description.

The article "Generating images with DDPM: A PyTorch implementation" (B. Pulfer, 2022)
trains DDPM (Ho et al. 2020) on Fashion-MNIST with a deliberately plain UNet:

- a frozen table of sinusoidal step embeddings (T = 1000 rows, 100 columns, Vaswani et
  al.'s formula), fed to a small MLP per stage (Linear -> SiLU -> Linear) whose output is
  added to that stage's input as a per-channel bias;
- stages of three conv blocks, each ``LayerNorm over (C, H, W) -> conv3x3 -> SiLU ->
  conv3x3 -> SiLU``, at widths 10 / 20 / 40 and a bottleneck at 3x3;
- 4x4 stride-2 convolutions down, transposed convolutions up, concatenated skips.

That gives about 0.6 M parameters. The LayerNorm over (C, H, W) ties the net to 28x28
inputs. One deliberate difference: the article builds its table with an exponent that uses
the column index twice, so its frequencies fall off twice as fast as Vaswani's; here the
table follows Vaswani exactly (:class:`SinusoidalTable`). The net learns from either code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embeddings import SinusoidalTable


def _time_mlp(time_dim: int, channels: int) -> nn.Module:
    return nn.Sequential(nn.Linear(time_dim, channels), nn.SiLU(), nn.Linear(channels, channels))


class LayerNormConvBlock(nn.Module):
    """``LayerNorm(C, H, W) -> conv3x3 -> SiLU -> conv3x3 -> SiLU`` (one article block)."""

    def __init__(self, in_channels: int, out_channels: int, side: int, normalize: bool = True):
        super().__init__()
        # Normalising over the whole (C, H, W) map with a per-pixel affine is what fixes the
        # spatial size; the article uses it instead of GroupNorm.
        self.norm = nn.LayerNorm((in_channels, side, side)) if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.act(self.conv1(self.norm(x)))))


class _Stage(nn.Module):
    """A chain of blocks with widths ``widths[0] -> widths[1] -> ...``, after adding a
    per-channel time bias from the stage's own MLP to its input."""

    def __init__(self, widths: list[int], side: int, time_dim: int, last_norm: bool = True):
        super().__init__()
        self.time_mlp = _time_mlp(time_dim, widths[0])
        n = len(widths) - 1
        self.blocks = nn.Sequential(
            *(
                LayerNormConvBlock(widths[i], widths[i + 1], side, normalize=last_norm or i < n - 1)
                for i in range(n)
            )
        )

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        return self.blocks(x + self.time_mlp(t_emb)[:, :, None, None])  # bias (B, C, 1, 1)


class ArticleUNet(nn.Module):
    """The Fashion-MNIST DDPM article's UNet with difflab's ``net(x, t, cond=None)``.

    ``t`` holds step indices in ``[0, num_steps)`` (floats are rounded; multiply continuous
    time by ``time_scale`` first). The net is unconditional: ``cond`` must be None.
    """

    image_size = 28

    def __init__(
        self,
        num_steps: int = 1000,
        time_dim: int = 100,
        in_channels: int = 1,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.time_scale = time_scale
        self.time_table = SinusoidalTable(num_steps, time_dim, interleave=True)
        d = time_dim
        # Encoder at 28, 14, 7; 4x4 stride-2 convs halve the size.
        self.enc1 = _Stage([in_channels, 10, 10, 10], 28, d)
        self.down1 = nn.Conv2d(10, 10, 4, stride=2, padding=1)  # 28 -> 14
        self.enc2 = _Stage([10, 20, 20, 20], 14, d)
        self.down2 = nn.Conv2d(20, 20, 4, stride=2, padding=1)  # 14 -> 7
        self.enc3 = _Stage([20, 40, 40, 40], 7, d)
        # 7 is odd: a 2x2 valid conv first (7 -> 6), then halve (6 -> 3).
        self.down3 = nn.Sequential(
            nn.Conv2d(40, 40, 2), nn.SiLU(), nn.Conv2d(40, 40, 4, stride=2, padding=1)
        )
        self.mid = _Stage([40, 20, 20, 40], 3, d)
        # Decoder mirrors it with transposed convs; skips are concatenated (doubling widths).
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(40, 40, 4, stride=2, padding=1),  # 3 -> 6
            nn.SiLU(),
            nn.ConvTranspose2d(40, 40, 2),  # 6 -> 7
        )
        self.dec3 = _Stage([80, 40, 20, 20], 7, d)
        self.up2 = nn.ConvTranspose2d(20, 20, 4, stride=2, padding=1)  # 7 -> 14
        self.dec2 = _Stage([40, 20, 10, 10], 14, d)
        self.up3 = nn.ConvTranspose2d(10, 10, 4, stride=2, padding=1)  # 14 -> 28
        # The article leaves the very last block un-normalised.
        self.dec1 = _Stage([20, 10, 10, 10], 28, d, last_norm=False)
        self.conv_out = nn.Conv2d(10, in_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            raise ValueError("ArticleUNet is unconditional: cond must be None")
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, 28, 28):
            raise ValueError(
                f"ArticleUNet takes (B, {self.in_channels}, 28, 28), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = t.reshape(1).expand(b) if t.numel() == 1 else t.reshape(b)
        emb = self.time_table(t * self.time_scale)  # (B, time_dim)

        h1 = self.enc1(x, emb)  # (B, 10, 28, 28)
        h2 = self.enc2(self.down1(h1), emb)  # (B, 20, 14, 14)
        h3 = self.enc3(self.down2(h2), emb)  # (B, 40, 7, 7)
        h = self.mid(self.down3(h3), emb)  # (B, 40, 3, 3)
        h = self.dec3(torch.cat([h3, self.up1(h)], dim=1), emb)  # (B, 20, 7, 7)
        h = self.dec2(torch.cat([h2, self.up2(h)], dim=1), emb)  # (B, 10, 14, 14)
        h = self.dec1(torch.cat([h1, self.up3(h)], dim=1), emb)  # (B, 10, 28, 28)
        return self.conv_out(h)
