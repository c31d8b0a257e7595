"""Build the parts of a run from its configuration: the noise process and the network.

The checkpoint's config.json stores the same description ("network": {...}), so a sampler
loading a checkpoint rebuilds exactly the network that was trained, with no code in the file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from difflab.config import ConfigError, DiffusionConfig, ModelConfig
from difflab.diffusion.edm import EDMProcess
from difflab.diffusion.flow import FlowProcess
from difflab.diffusion.process import NoiseProcess, make_process
from difflab.models import presets
from difflab.models.autoencoder import Autoencoder, AutoencoderConfig
from difflab.models.text import TextConditioned, text_encoder_from_spec
from difflab.models.transformer import DiT, DiTConfig
from difflab.models.unet import UNet, UNetConfig, level_sides


def build_process(cfg: DiffusionConfig) -> NoiseProcess:
    """The noise process a DiffusionConfig describes. EDM and flow matching are processes that
    also train and wrap their network (`training_loss`, `denoiser`); what they refuse is a
    ConfigError, as for any other bad setting."""
    try:
        if cfg.process == "edm":
            return EDMProcess(
                sigma_min=cfg.edm_sigma_min,
                sigma_max=cfg.edm_sigma_max,
                sigma_data=cfg.sigma_data,
                p_mean=cfg.edm_p_mean,
                p_std=cfg.edm_p_std,
            )
        if cfg.process == "flow":
            return FlowProcess(
                t_min=cfg.t_min,
                time_sampling=cfg.flow_time_sampling,
                logit_mean=cfg.flow_logit_mean,
                logit_std=cfg.flow_logit_std,
            )
    except ValueError as e:
        raise ConfigError(f"diffusion: {e}") from e
    if cfg.process == "discrete":
        return make_process(
            "discrete",
            schedule=cfg.schedule,
            T=cfg.timesteps,
            zero_terminal_snr=cfg.zero_terminal_snr,
        )
    if cfg.process == "vp":
        schedule = cfg.schedule if cfg.schedule in ("linear", "cosine") else None
        if schedule is None:
            raise ConfigError(
                f"diffusion.schedule = {cfg.schedule!r} has no continuous VP form;"
                " choose linear or cosine"
            )
        return make_process("vp", schedule=schedule, t_min=cfg.t_min)
    return make_process("ve", sigma=cfg.ve_sigma, t_min=cfg.t_min)


# Network kinds a spec can describe: the config dataclass and the module class of each.
NETWORK_KINDS: dict[str, tuple[type, type]] = {
    "unet": (UNetConfig, UNet),
    "autoencoder": (AutoencoderConfig, Autoencoder),
    "dit": (DiTConfig, DiT),
}


# A preset names where it attends by feature-map side at its own input size (7 of 28 for the
# Fashion-MNIST UNets). A user's image folder at another size keeps the same architecture: the
# same levels attend (16 of 64), unless the config names the sides itself.
RESOLUTION_FIELDS = ("attention_resolutions", "linear_attention_resolutions",
                     "transformer_resolutions")


def _same_levels(base: Any, size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's attention sides moved to the same levels of a `size` input."""
    if not hasattr(base, "level_sides") or size == base.image_size or "channel_mults" in overrides:
        return {}
    old_sides = base.level_sides
    new_sides = level_sides(size, len(old_sides))
    return {name: tuple(new_sides[old_sides.index(side)] for side in getattr(base, name))
            for name in RESOLUTION_FIELDS if hasattr(base, name) and name not in overrides}


def network_spec(
    cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int | None
) -> dict[str, Any]:
    """A JSON-able description of the network: {'type': 'unet' | 'dit' | 'autoencoder',
    'config': {...}}, or {'type': 'preset', ...} for fixed network classes."""
    c, h, w = image_shape
    if h != w:
        raise ConfigError(f"images must be square, got {h}x{w}; set data.image_size")
    if cfg.preset not in presets.PRESETS:
        raise ConfigError(
            f"unknown model.preset {cfg.preset!r}; allowed: {', '.join(sorted(presets.PRESETS))}"
        )
    preset = presets.PRESETS[cfg.preset]
    base = preset.config
    if base is None:  # a fixed network class (e.g. the article's UNet): no overrides
        if cfg.overrides:
            raise ConfigError(
                f"model.preset {cfg.preset!r} takes no overrides, got {sorted(cfg.overrides)}"
            )
        return {"type": "preset", "name": cfg.preset, "in_channels": c}
    config_cls = NETWORK_KINDS[preset.kind][0]
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(cfg.overrides) - fields)
    if unknown:
        raise ConfigError(
            f"unknown model.overrides key(s) {unknown} for a {preset.kind}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    settings = {**{k: getattr(base, k) for k in fields}, "in_channels": c, "image_size": h}
    settings.update(_same_levels(base, h, cfg.overrides))
    settings.update(cfg.overrides)
    if (
        "num_classes" in fields
        and "num_classes" not in cfg.overrides
        and base.num_classes is not None
    ):
        settings["num_classes"] = num_classes
    try:
        config_cls(**settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from e
    return {
        "type": preset.kind,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
    }


def network_from_spec(spec: dict[str, Any]) -> torch.nn.Module:
    if spec["type"] == "text-conditioned":  # a denoiser + the text encoder trained with it
        return TextConditioned(network_from_spec(spec["net"]), text_encoder_from_spec(spec["text"]))
    if spec["type"] == "preset":
        return presets.get_preset(spec["name"], in_channels=spec.get("in_channels", 1))
    kinds = NETWORK_KINDS
    if spec["type"] not in kinds:
        raise ConfigError(
            f"unknown network type {spec['type']!r}; allowed: preset, {', '.join(kinds)}"
        )
    config_cls, net_cls = kinds[spec["type"]]
    return net_cls(config_cls(**spec["config"]))


def complete_network_spec(spec: Any) -> Any:
    """`spec` with every network setting a later difflab added filled in at its default, so a
    checkpoint written before a setting existed compares equal to a run that builds the same
    network (e.g. `text_layers`, added 2026-12-04, is 0 in every older checkpoint). Anything
    that is not a spec of a known network kind comes back unchanged, to be refused by the
    comparison."""
    if not isinstance(spec, dict):
        return spec
    if spec.get("type") == "text-conditioned":
        return {**spec, "net": complete_network_spec(spec.get("net"))}
    kind = NETWORK_KINDS.get(spec.get("type"))
    if kind is None or not isinstance(spec.get("config"), dict):
        return spec
    defaults = {}
    for f in dataclasses.fields(kind[0]):
        if f.init and f.default is not dataclasses.MISSING:
            defaults[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return {**spec, "config": {**defaults, **spec["config"]}}


# Network settings whose only effect is to add zero-initialised layers: a network built with
# one turned on computes what the network without it does until it trains, so a warm start
# (--init-from) may turn it on over a checkpoint that has it off, and the added layers start
# from their own zero initialisation.
ZERO_START_SETTINGS = ("transformer_position",)

# The settings that give a network without any context (no text, no class token) the text's
# ways in: spatial transformers, whose output projection starts at zero, so each is the
# identity (models.attention.SpatialTransformer), and the pooled text's MLP, whose last layer
# starts at zero (models.conditioning.PooledText). The text layers feed only those. So an
# unconditional network with these added computes what it did, whatever the text, and a text
# model may be fine-tuned from a trained unconditional one (the way conditioning is added to a
# pretrained network: Zhang et al. 2023, ControlNet's zero convolutions).
TEXT_SETTINGS = ("context_dim", "transformer_resolutions", "transformer_head_dim",
                 "transformer_depth", "transformer_ff_mult", "transformer_position",
                 "pooled_text", "text_layers", "text_width")


def _zero_start_changes(config: dict[str, Any], mine: dict[str, Any], text: bool) -> list[str]:
    """The settings in which `mine` differs from `config` only by adding zero-start layers
    (`text`: whether TEXT_SETTINGS may be added, which holds for the UNet)."""
    if text and config.get("context_dim") is None and not config.get("transformer_resolutions") \
            and not config.get("class_context") and mine.get("context_dim") is not None:
        return [k for k in TEXT_SETTINGS if config.get(k) != mine.get(k)]
    return [k for k in ZERO_START_SETTINGS if mine.get(k) is True and config.get(k) is False]


def grown_network_spec(saved: Any, mine: Any) -> tuple[Any, list[str]]:
    """`saved` (a complete network spec) with the settings that `mine` changes only by adding
    zero-initialised layers (ZERO_START_SETTINGS turned on; TEXT_SETTINGS over a network
    without a context) taken from `mine`, and their names: the spec a warm start from `saved`
    into a run building `mine` compares with."""
    if not (isinstance(saved, dict) and isinstance(mine, dict)):
        return saved, []
    if saved.get("type") == "text-conditioned" and mine.get("type") == "text-conditioned":
        net, grown = grown_network_spec(saved.get("net"), mine.get("net"))
        return {**saved, "net": net}, grown
    config, mine_config = saved.get("config"), mine.get("config")
    if not (isinstance(config, dict) and isinstance(mine_config, dict)) \
            or saved.get("type") != mine.get("type"):
        return saved, []
    grown = _zero_start_changes(config, mine_config, text=saved.get("type") == "unet")
    return {**saved, "config": {**config, **{k: mine_config[k] for k in grown}}}, grown


def build_network(
    cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network for images of `image_shape`, and the spec that rebuilds it."""
    spec = network_spec(cfg, image_shape, num_classes)
    net = network_from_spec(spec)
    spec["num_classes"] = getattr(getattr(net, "config", None), "num_classes", None)
    return net, spec


def describe_network(net: torch.nn.Module, image_shape: tuple[int, int, int]) -> str:
    n = sum(p.numel() for p in net.parameters())
    return f"{type(net).__name__}: {n / 1e6:.2f} M parameters, input {tuple(image_shape)}"
