"""Named networks: the default difflab model and the small 28x28 UNets of the reference texts.

- ``ddpm-small-28``: difflab's default Fashion-MNIST / MNIST denoiser (DDPM-style UNet,
  widths 32/64/128, self-attention at 7x7, about 1.35 M parameters).
- ``fashion-article``: the UNet of the Fashion-MNIST DDPM article (Pulfer 2022), see
  :mod:`difflab.models.article_unet`.
- ``score-unet-28`` / ``score-unet-28-add``: the small score network of Song's MNIST
  score-SDE tutorial (Song et al. 2021) expressed as a :class:`UNetConfig`: widths
  32/64/128/256, Gaussian Fourier time features for continuous ``t`` in ``[0, 1]``, skips
  by concatenation or by addition. Its division of the output by the marginal std
  ``sigma(t)`` is a property of the diffusion process (score parameterisation), not of the
  network, so it lives there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .article_unet import ArticleUNet
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class Preset:
    description: str
    build: Callable[..., nn.Module]
    config: UNetConfig | None = None  # None for networks that are not a UNetConfig UNet


def _check_overrides(name: str, overrides: dict[str, Any], allowed: list[str]) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown override(s) {unknown}; allowed: {', '.join(allowed)}")


def _unet(config: UNetConfig) -> Callable[..., nn.Module]:
    def build(**overrides: Any) -> nn.Module:
        allowed = [f.name for f in dataclasses.fields(UNetConfig) if f.init]
        _check_overrides("UNetConfig", overrides, allowed)
        return UNet(dataclasses.replace(config, **overrides) if overrides else config)

    return build


def _article(**overrides: Any) -> nn.Module:
    _check_overrides(
        "ArticleUNet", overrides, ["num_steps", "time_dim", "in_channels", "time_scale"]
    )
    return ArticleUNet(**overrides)


_DDPM_SMALL = UNetConfig()  # the defaults are this preset; see UNetConfig for each reason
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

PRESETS: dict[str, Preset] = {
    "ddpm-small-28": Preset(
        "difflab's default 28x28 DDPM UNet: widths 32/64/128, attention at 7x7, ~1.35 M",
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
}


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
