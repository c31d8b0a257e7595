"""Named networks: the default difflab model and the small 28x28 UNets of the reference texts.

- ``ddpm-tiny-28``: difflab's default Fashion-MNIST denoiser (``configs/fashion_mnist.toml``):
  ``ddpm-small-28`` at half the width (16/32/64, ~0.46 M), about 2.8x the training images per
  CPU-second. On the budgets of a first run (minutes on a CPU) it matches or beats the wider
  net, and on a CPU without native bf16 it is far ahead (BENCHMARKS.md, "Network and batch
  for a CPU budget").
- ``ddpm-small-28``: the DDPM-style UNet of the shipped Fashion-MNIST / MNIST models and of
  ``configs/fashion_mnist_large.toml``: widths 32/64/128, self-attention at 7x7, about 1.39 M
  parameters; it keeps learning where the tiny one flattens.
- ``fashion-article``: the UNet of the Fashion-MNIST DDPM article (Pulfer 2022), see
  :mod:`difflab.models.article_unet`.
- ``score-unet-28`` / ``score-unet-28-add``: the small score network of Song's MNIST
  score-SDE tutorial (Song et al. 2021) expressed as a :class:`UNetConfig`: widths
  32/64/128/256, Gaussian Fourier time features for continuous ``t`` in ``[0, 1]``, skips
  by concatenation or by addition. Its division of the output by the marginal std
  ``sigma(t)`` is a property of the diffusion process (score parameterisation), not of the
  network, so it lives there.
- ``dit-*``: DiT transformer backbones (:mod:`difflab.models.transformer`), for pixels
  (``dit-s-28``, ``dit-s4-28``) or 7x7x4 latents with text cross-attention (``dit-latent-7``).
- ``unet-latent-text-7``: the UNet of latent text-to-image (``configs/fashion_text.toml``,
  the shipped ``fashion-text``; with ``image_size = 8``, the shipped ``shapes-text`` of
  ``configs/shapes_text_latent.toml``) on the ``kl-f4-28`` autoencoder's 7x7x4 latents: two levels
  (7 -> 4) 64/128 wide, a spatial transformer at both cross-attending to the 384-wide
  all-MiniLM-L6-v2 sentence embedding, which is also added to the time embedding
  (``pooled_text``, as in Imagen and SDXL) so that every block sees it; ~2.7 M parameters.
- ``unet-shapes-text-32``: pixel-space text-to-image on the 32x32 RGB shapes world
  (``configs/shapes_text.toml``, the shipped ``shapes-text`` until it went latent): widths
  32/64/64 at 32/16/8,
  spatial transformers at 16 and 8 cross-attending to the frozen MiniLM's per-token states
  (and its pooled embedding added to the time embedding).
- ``kl-f4-28``: the KL autoencoder of latent diffusion, 28x28x1 -> 7x7x4
  (:mod:`difflab.models.autoencoder`).
- ``score-transformer-28``: the write-up's spatial-transformer score UNet for
  class-conditional digits (the ``UNet_Tranformer`` of the score-SDE / stable-diffusion
  tutorial that follows Song's): ``score-unet-28`` (Fourier time, VE SDE) with a
  :class:`~difflab.models.attention.SpatialTransformer` at the two lowest resolutions, as
  there: after the 7x7 blocks (down and up) and in the 4x4 middle. Each cross-attends to
  one learned token for the digit (``class_context``; label 10 is the learned null token
  of classifier-free guidance), which also enters the time embedding. Kept under 6 M
  parameters (~5.7 M) by running the transformers 128 wide (4 heads of 32: the full width
  at 7x7, half of the middle's 256) with a GEGLU hidden width of 2x; full-width
  transformers with LDM's 4x feed-forward would make it 7.0 M. With one context token the
  cross-attention weights are identically 1, so it acts as a learned per-class bias at
  every position, and its query/key projections (~0.15 M) get no gradient;
  that is the write-up's design, kept as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .article_unet import ArticleUNet
from .autoencoder import Autoencoder, AutoencoderConfig
from .transformer import DIT_PRESETS, DiT
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class Preset:
    description: str
    build: Callable[..., nn.Module]
    # The preset's config dataclass (UNetConfig, AutoencoderConfig, ...); None for fixed
    # network classes such as the article's UNet.
    config: Any = None
    # What the network is: "unet" / "dit" (denoisers) or "autoencoder" (first stage).
    kind: str = "unet"


def _check_overrides(name: str, overrides: dict[str, Any], allowed: list[str]) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown override(s) {unknown}; allowed: {', '.join(allowed)}")


def _builder(net_class: type[nn.Module], config: Any) -> Callable[..., nn.Module]:
    """A preset's build function: `net_class(config)`, with fields of the config
    dataclass (UNetConfig, DiTConfig, AutoencoderConfig) overridable by keyword."""

    def build(**overrides: Any) -> nn.Module:
        allowed = [f.name for f in dataclasses.fields(config) if f.init]
        _check_overrides(type(config).__name__, overrides, allowed)
        return net_class(dataclasses.replace(config, **overrides) if overrides else config)

    return build


def _unet(config: UNetConfig) -> Callable[..., nn.Module]:
    return _builder(UNet, config)


def _article(**overrides: Any) -> nn.Module:
    _check_overrides(
        "ArticleUNet", overrides, ["num_steps", "time_dim", "in_channels", "time_scale"]
    )
    return ArticleUNet(**overrides)


_DDPM_SMALL = UNetConfig()  # the defaults are this preset; see UNetConfig for each reason
_DDPM_TINY = dataclasses.replace(_DDPM_SMALL, base_channels=16)
_SCORE = UNetConfig(
    base_channels=32,
    channel_mults=(1, 2, 4, 8),  # 28, 14, 7, 4: widths 32, 64, 128, 256
    attention_resolutions=(),
    mid_attention=False,  # the tutorial's network is purely convolutional
    time_embedding="fourier",
    time_features=256,  # Fourier code of 256 features, as in the tutorial
    time_embed_dim=256,
    fourier_scale=30.0,  # the tutorial's scale for t in [0, 1]
    time_scale=1.0,
)

_SCORE_TRANSFORMER = dataclasses.replace(
    _SCORE,
    num_classes=10,  # digits
    class_context=True,  # the label as a context token for cross-attention (the write-up)
    transformer_resolutions=(7, 4),  # 4 is the middle level of 28 -> 14 -> 7 -> 4
    transformer_head_dim=32,  # 4 heads x 32: transformers 128 wide at both levels
    transformer_ff_mult=2,  # keeps the whole net under 6 M parameters
)

# Latent diffusion runs on 7x7 maps of 4 channels, too small for the pixel UNet's third level:
# two levels, twice as wide, and the text read by transformers (heads of 32 channels) at both.
_LATENT_TEXT = dataclasses.replace(
    _DDPM_SMALL,
    in_channels=4,  # the kl-f4-28 latent: 28x28x1 -> 7x7x4
    image_size=7,
    base_channels=64,
    channel_mults=(1, 2),  # 7 -> 4
    attention_resolutions=(),  # the transformers attend at both levels instead
    transformer_resolutions=(7, 4),
    transformer_head_dim=32,
    context_dim=384,  # all-MiniLM-L6-v2's width
    pooled_text=True,
)

# Text-to-image in pixel space on the 32x32 RGB shapes world (configs/shapes_text.toml, the
# shipped ``shapes-text`` until 2026-12-06): three levels 32 -> 16 -> 8, spatial transformers
# at 16 and 8 that cross-attend to the MiniLM's per-token states (binding "red" to "circle"
# and "left of" to the right pair needs the words, not one pooled vector), whose pooled token
# also joins the time embedding. Objects are 8-12 px: 2-3 cells at 8x8, 4-6 at 16x16, so both
# levels can place them; 32x32 keeps only convolutions (1,024 positions: attention there costs
# most).
_SHAPES_TEXT = dataclasses.replace(
    _DDPM_SMALL,
    in_channels=3,
    image_size=32,
    base_channels=32,
    channel_mults=(1, 2, 2),  # 32, 16, 8: widths 32, 64, 64
    attention_resolutions=(),  # the transformers attend at 16 and 8 instead
    transformer_resolutions=(16, 8),
    transformer_head_dim=32,
    transformer_ff_mult=2,
    context_dim=384,  # all-MiniLM-L6-v2's width
    pooled_text=True,
)

PRESETS: dict[str, Preset] = {
    "ddpm-tiny-28": Preset(
        "difflab's default 28x28 DDPM UNet for a CPU budget: widths 16/32/64, attention at "
        "7x7, ~0.46 M",
        _unet(_DDPM_TINY),
        _DDPM_TINY,
    ),
    "ddpm-small-28": Preset(
        "difflab's 28x28 DDPM UNet of the shipped models: widths 32/64/128, attention at 7x7, "
        "~1.39 M",
        _unet(_DDPM_SMALL),
        _DDPM_SMALL,
    ),
    "fashion-article": Preset(
        "the Fashion-MNIST DDPM article's UNet: widths 10/20/40, LayerNorm blocks, ~0.5 M",
        _article,
    ),
    "score-unet-28": Preset(
        "score-SDE tutorial's ScoreNet as a UNet: 32/64/128/256, Fourier time, concat skips",
        _unet(_SCORE),
        _SCORE,
    ),
    "score-unet-28-add": Preset(
        "score-SDE tutorial's ScoreNet as a UNet with skips by addition",
        _unet(dataclasses.replace(_SCORE, skip="add")),
        dataclasses.replace(_SCORE, skip="add"),
    ),
    "score-transformer-28": Preset(
        "score-SDE write-up's spatial-transformer UNet: score-unet-28 + transformers at 7 and "
        "4 cross-attending to a class token, 10 classes + null, ~5.7 M",
        _unet(_SCORE_TRANSFORMER),
        _SCORE_TRANSFORMER,
    ),
    "unet-latent-text-7": Preset(
        "latent text-to-image UNet on 7x7x4: widths 64/128, transformers at 7 and 4 "
        "cross-attending to a 384-d text embedding, which joins the time embedding, ~2.7 M",
        _unet(_LATENT_TEXT),
        _LATENT_TEXT,
    ),
    "unet-shapes-text-32": Preset(
        "pixel text-to-image UNet on 32x32x3 shapes: widths 32/64/64, transformers at 16 "
        "and 8 cross-attending to 384-d per-token text states",
        _unet(_SHAPES_TEXT),
        _SHAPES_TEXT,
    ),
    "kl-f4-28": Preset(
        "KL autoencoder 28x28x1 -> 7x7x4 (f = 4), widths 32/64/64, ~0.6 M: latent diffusion's "
        "first stage",
        _builder(Autoencoder, AutoencoderConfig()),
        AutoencoderConfig(),
        kind="autoencoder",
    ),
}

for _name, _config in DIT_PRESETS.items():
    PRESETS[_name] = Preset(
        f"DiT transformer (Peebles & Xie 2023): {_config.image_size}x{_config.image_size}"
        f"x{_config.in_channels}, patch {_config.patch_size}, width {_config.width}, "
        f"depth {_config.depth}" + (", text cross-attention" if _config.context_dim else ""),
        _builder(DiT, _config),
        _config,
        kind="dit",
    )


def _lookup(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None


def preset_config(name: str) -> UNetConfig:
    """The :class:`UNetConfig` of a preset (ValueError for presets that are not UNets)."""
    preset = _lookup(name)
    if preset.config is None:
        raise ValueError(f"preset {name!r} is not built from a UNetConfig")
    return preset.config


def get_preset(name: str, **overrides: Any) -> nn.Module:
    """Build a preset network; ``overrides`` replace config fields (e.g. ``num_classes=10``)."""
    return _lookup(name).build(**overrides)
