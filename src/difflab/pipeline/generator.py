"""A `Generator` bundles a trained network with its noise process and draws images from it.

    gen = Generator.from_checkpoint("runs/fashion/last")
    images = gen.generate(16, seed=0)   # uint8 (16, 1, 28, 28), with the run's [sample] settings
    images = gen.generate(16, sampler="ddim", steps=50, seed=0)       # or any other sampler

A latent text-to-image model is the same object with two more parts, loaded from one folder
(the denoiser, the frozen autoencoder as autoencoder.safetensors, and a reference to the
text encoder, which comes from its own package):

    gen = Generator.from_checkpoint("fashion-text")
    gen.generate(8, prompt="a pair of sneakers", guidance=3, negative_prompt="a sandal")
    gen.img2img(image, "an ankle boot")       # SDEdit (Meng et al. 2022); strength 0.9
    gen.inpaint(image, mask, "a bag")                       # keep the unmasked pixels

Sample i of a run with seed s always starts from the same noise and draws the same step
noise, whatever the batch size: every sample has its own torch.Generator.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.argtypes import MAX_ATTENTION_GUIDANCE, MAX_SEED, check_text
from difflab.build import build_process, network_from_spec
from difflab.checkpoints.components import (
    autoencoder_from_weights,
    caption_bank_of,
    guide_component,
    guide_of,
)
from difflab.checkpoints.names import resolve_checkpoint
from difflab.checkpoints.store import CheckpointError, load_checkpoint, load_weights_into
from difflab.config import TextConfig, config_from_dict
from difflab.data import class_aliases, names_every_class, prompt_reader
from difflab.data.base import resolve_class
from difflab.data.captions import quote_prompt
from difflab.data.transforms import to_uint8
from difflab.diffusion.denoiser import (
    Denoiser,
    GuidedDenoiser,
    InpaintingDenoiser,
    ThresholdedDenoiser,
    check_guidance_interval,
    network_denoiser,
)
from difflab.diffusion.noise import per_sample_generators, randn
from difflab.hardware import pick_device
from difflab.models.caption_bank import (
    OUT_OF_DOMAIN_BELOW,
    CaptionBank,
    OutOfDomainPrompt,
    UnfamiliarPrompt,
    show_captions,
)
from difflab.models.conditioning import TextCondition
from difflab.models.text import TextConditioned, text_encoder_from_spec
from difflab.ownership import MARK, MARK_KEY, written_by_difflab
from difflab.pipeline.attention_guidance import (
    AttentionGuidedDenoiser,
    SampleEnergy,
    scaled_energy,
    summed_energy,
)
from difflab.pipeline.binding_guidance import binding_energy, binding_targets
from difflab.pipeline.compiled import CompiledNetwork
from difflab.pipeline.inputs import as_image_tensor, as_mask_tensor
from difflab.pipeline.progress import SamplingProgress
from difflab.pipeline.relation_guidance import relation_energy, relation_targets
from difflab.pipeline.relation_regions import RelationRegionsDenoiser, region_phrases
from difflab.pipeline.settings import (
    ATTENTION_GUIDANCE,
    DEFAULT_IMG2IMG_STRENGTH,
    FALLBACK_SAMPLER,
    SamplingSettings,
    check_sampling_inputs,
    check_strength,
    is_guided,
    result_count,
)
from difflab.samplers import (
    check_sampler_options,
    default_spacing,
    default_steps,
    default_timesteps,
    get_sampler,
)
from difflab.samplers.timesteps import truncate_timesteps

Tensor = torch.Tensor

# diffusers' pipeline keywords a user may bring along, and what difflab calls them
DIFFUSERS_NAMES = {"num_inference_steps": "steps", "guidance_scale": "guidance",
                   "num_images_per_prompt": "n (the first argument)"}
PRECISIONS = ("fp32", "bf16")  # what the network runs in while sampling
GUIDANCE_NEEDS_CONDITION = "guidance needs a conditional checkpoint and a class or a prompt"


class Generator:
    """A trained diffusion model, ready to sample: pixel space, or latent space with the
    autoencoder that decodes it; conditioned on nothing, class labels, or text."""

    def __init__(
        self,
        net: torch.nn.Module,
        process,
        parameterization: str,
        image_shape: tuple[int, int, int],
        *,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        config: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        autoencoder: torch.nn.Module | None = None,
        text_encoder: Any = None,
        caption_bank: CaptionBank | None = None,
        guide: torch.nn.Module | None = None,
    ):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        # autoguidance's guide: this network at an earlier point of its run (train.guide_at)
        self.guide = guide.to(self.device).eval() if guide is not None else None
        self.process, self.parameterization = process, parameterization
        self.class_names, self.num_classes = class_names, num_classes
        self.config = config or {}
        self.autoencoder = autoencoder.to(self.device).eval() if autoencoder is not None else None
        self.text_encoder = text_encoder
        self.caption_bank = caption_bank
        # What the denoiser works on (latents for a latent model) and what comes out (pixels).
        self.model_shape = tuple(image_shape)
        self.image_shape = self.model_shape
        if self.autoencoder is not None:
            ae = self.autoencoder.config
            self.image_shape = (ae.in_channels, ae.image_size, ae.image_size)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | None = None, use_ema: bool = True
    ) -> Generator:
        path = resolve_checkpoint(path)
        ck = load_checkpoint(path)
        kind = ck.config.get("kind")
        if kind not in ("pixel-diffusion", "latent-diffusion"):
            hint = (
                "; use it as latent.autoencoder of a latent diffusion run"
                if kind == "autoencoder"
                else ""
            )
            raise ValueError(
                f"{path} holds a {kind!r} model; Generator loads pixel-diffusion and "
                f"latent-diffusion checkpoints{hint}"
            )
        run = config_from_dict(ck.config["run"])
        net = network_from_spec(ck.config["network"])
        load_weights_into(net, ck.weights(use_ema), str(path))
        autoencoder = text_encoder = None
        if kind == "latent-diffusion":
            if "autoencoder" not in ck.components:
                raise ValueError(f"{path} is a latent diffusion model without its autoencoder")
            autoencoder = autoencoder_from_weights(
                ck.config["autoencoder"]["network"], ck.components["autoencoder"], str(path)
            )
        if ck.config.get("text_encoder"):
            if isinstance(net, TextConditioned):  # trained with the net: its weights are there
                text_encoder = net.text
            else:  # a frozen pretrained encoder: rebuilt from its package
                text_encoder = text_encoder_from_spec(ck.config["text_encoder"])
        caption_bank = caption_bank_of(ck.components, str(path))
        guide = guide_of(ck.config["network"], ck.components, str(path))
        device = pick_device(device).device  # CUDA, then MPS, then the CPU
        return cls(
            net.float(),
            build_process(run.diffusion),
            run.diffusion.parameterization,
            tuple(ck.config.get("model_shape", ck.config["image_shape"])),
            class_names=_class_names(ck.config, str(path / "config.json")),
            num_classes=ck.config["network"].get("num_classes"),
            config=ck.config,
            device=device,
            autoencoder=autoencoder,
            text_encoder=text_encoder,
            caption_bank=caption_bank,
            guide=guide,
        )

    @classmethod
    def from_trainer(cls, trainer: Any) -> Generator:
        """A Generator over a live trainer's EMA weights (no copy; the EMA net is frozen), for
        sample grids and FID while a run trains. `trainer` is read by its attributes only
        (difflab.training.Trainer): the pipeline does not import training, nor it the
        pipeline (docs/design.md)."""
        return cls(
            trainer.ema.model,
            trainer.process,
            trainer.cfg.diffusion.parameterization,
            trainer.model_shape,
            class_names=trainer.data.class_names,
            num_classes=trainer.net_config.get("num_classes"),
            device=trainer.device,
            autoencoder=trainer.autoencoder,
            # A trainable text encoder is part of the EMA net; a frozen one is not.
            text_encoder=getattr(trainer.ema.model, "text", trainer.text_encoder),
            # its guide weights, once it keeps them (autoguidance), in the run's network
            guide=guide_of(trainer.net_config, guide_component(trainer.guide), "the run"),
        )

    @property
    def takes_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def dataset(self) -> str:
        """The name of the dataset the model was trained on ("" without a run config)."""
        return self.config.get("run", {}).get("data", {}).get("name", "")

    @property
    def conditional(self) -> bool:
        """Whether the model takes a class or a prompt (and so can be guided)."""
        return self.num_classes is not None or self.takes_text

    # ------------------------------------------------------------------ sampling settings
    def sample_defaults(self) -> dict[str, Any]:
        """The checkpoint's [sample] settings that sampling falls back to: sampler and steps,
        eta when the sampler is ddim, guidance (possibly None) for a conditional model. Empty
        for a Generator without a run config. x0 clipping is not here: `clip="auto"` decides
        it from the model (static in pixel space, none on latents)."""
        run = self.config.get("run")
        if run is None:
            return {}
        sc = config_from_dict(run).sample
        out: dict[str, Any] = {"sampler": sc.sampler, "steps": sc.steps}
        if sc.sampler == "ddim":
            out["eta"] = sc.eta
        if self.conditional:
            out["guidance"] = sc.guidance
        if sc.autoguidance is not None and self.guide is not None:
            out["autoguidance"] = sc.autoguidance  # a checkpoint saved before its guide: none
        if sc.guidance_interval is not None and ("guidance" in out or "autoguidance" in out):
            out["guidance_interval"] = sc.guidance_interval
        for key in ("sigma_max", "rho"):  # the Karras grid its sampler was tuned on
            if getattr(sc, key) is not None:
                out[key] = getattr(sc, key)
        for key in ATTENTION_GUIDANCE:  # guidance from the prompt's own attention maps
            if getattr(sc, key) and self.takes_attention_guidance:
                out[key] = getattr(sc, key)
        if sc.relation_regions and self.takes_text and self.takes_crops:
            out["relation_regions"] = True
        return out

    def sampling_settings(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        *,
        conditioned: bool = False,
        guidance_interval: tuple[float, float] | None = None,
        autoguidance: float | None = None,
        sigma_max: float | None = None,
        rho: float | None = None,
        relation_guidance: float | None = None,
        binding_guidance: float | None = None,
        relation_regions: bool | None = None,
    ) -> SamplingSettings:
        """Fill what the caller left None from :meth:`sample_defaults`.

        Steps and eta belong to the checkpoint's sampler: another sampler with no steps given
        takes its own default steps (difflab.samplers.DEFAULTS), not the ones tuned for a
        different solver. The checkpoint's guidance applies only when `conditioned` (a class
        or prompt is asked for): an unconditional draw has nothing to guide toward. A
        `guidance_interval` left None is the checkpoint's, if it has one; (0, 1e9) guides at
        every step. `autoguidance` left None is the checkpoint's, if it has one and the guide
        weights to go with it; it replaces classifier-free guidance, so the two are not given
        together. The interval applies to whichever of the two guides the draw. `sigma_max`
        and `rho` shape the Karras grid of a sampler that steps on one; left None, they are
        the checkpoint's when its own sampler runs (they were chosen with it), like steps.
        `relation_guidance`, `binding_guidance` and `relation_regions` left None are the
        checkpoint's when a prompt is asked for (0, False: off)."""
        defaults = self.sample_defaults()
        source = {"sampler": "given", "steps": "given"}
        if sampler is None:
            sampler = defaults.get("sampler", FALLBACK_SAMPLER)
            source["sampler"] = "checkpoint" if defaults else "default"
        get_sampler(sampler)  # fail on a bad name before any work
        own = defaults.get("sampler") == sampler  # the checkpoint's settings are for this one
        if steps is None:
            steps = defaults["steps"] if own else default_steps(sampler, self.process)
            source["steps"] = "checkpoint" if own else "default"
        elif self.process.discrete and steps > self.process.T:
            # now, before a line says what runs (and before a compile is started for it)
            raise ValueError(f"steps {steps} is more than this model's T = {self.process.T} "
                             f"discrete time steps: give 1..{self.process.T}")
        if guidance is not None:
            source["guidance"] = "given"
        elif conditioned and self.conditional:
            guidance = defaults.get("guidance")
            source["guidance"] = "checkpoint" if "guidance" in defaults else "default"
        if guidance is not None and not (conditioned and self.conditional):
            raise ValueError(GUIDANCE_NEEDS_CONDITION)  # now, before a line says what runs
        eta = defaults.get("eta") if own else None
        grid = self._grid(sampler, own, defaults, source, sigma_max=sigma_max, rho=rho)
        auto = self._autoguidance(autoguidance, guidance, source, defaults)
        if auto is not None and guidance is not None:  # the checkpoint's, which it replaces
            guidance = None
            del source["guidance"]
        interval = None
        guided = is_guided(guidance, auto)
        if not guided and guidance_interval is not None:
            raise ValueError(self._why_no_guidance(conditioned, guidance))
        if guided:
            if guidance_interval is not None:
                interval = check_guidance_interval(guidance_interval)
                source["guidance_interval"] = "given"
            elif "guidance_interval" in defaults:
                interval = defaults["guidance_interval"]
                source["guidance_interval"] = "checkpoint"
        given = {"relation_guidance": relation_guidance, "binding_guidance": binding_guidance}
        attention = {k: self._attention_guidance(k, given[k], conditioned, source, defaults)
                     for k in ATTENTION_GUIDANCE}
        regions = self._relation_regions(relation_regions, conditioned, source, defaults)
        return SamplingSettings(sampler, steps, guidance, eta, source, interval, auto, **grid,
                                **attention, relation_regions=regions)

    def _grid(self, sampler: str, own: bool, defaults: dict, source: dict,
              **given: float | None) -> dict[str, float | None]:
        """sigma_max and rho of the Karras grid a draw uses (None: the sampler's own), each
        given or the checkpoint's; refused for a sampler whose grid is not a Karras one."""
        grid: dict[str, float | None] = {}
        for key, value in given.items():
            if value is not None:
                if not (isinstance(value, int | float) and not isinstance(value, bool)
                        and math.isfinite(value) and value > 0):
                    raise ValueError(f"{key} must be a number > 0, got {value!r}")
                grid[key], source[key] = float(value), "given"
            elif own and key in defaults:
                grid[key], source[key] = defaults[key], "checkpoint"
        spacing = default_spacing(sampler, self.process)
        if spacing != "karras" and any(source.get(k) == "given" for k in grid):
            raise ValueError(
                f"sigma_max and rho shape the Karras time grid, and {sampler} steps on a "
                f"{spacing!r} grid; choose a sampler on the Karras grid (dpmpp_2m, "
                "dpmpp_2m_sde, heun, ...)"
            )
        return grid if spacing == "karras" else {}

    def _autoguidance(self, given: float | None, guidance: float | None, source: dict,
                      defaults: dict) -> float | None:
        """The autoguidance weight a draw uses (None: off), its source noted in `source`."""
        if given is not None:
            if self.guide is None and given != 1.0:  # 1 is the model alone: nothing to guide
                raise ValueError(
                    "autoguidance needs a guide, an earlier version of this model, and this "
                    "checkpoint holds none: train with train.guide_at (e.g. 0.25)"
                )
            if source.get("guidance") == "given" and guidance is not None:
                raise ValueError(
                    "autoguidance and guidance are two ways to guide the same steps: give one"
                )
            check_sampling_inputs(1, None, given, 1, guidance_name="autoguidance")
            source["autoguidance"] = "given"
            return float(given)
        if "autoguidance" in defaults and guidance is None:
            source["autoguidance"] = "checkpoint"
            return defaults["autoguidance"]
        return None

    def _why_no_guidance(self, conditioned: bool, guidance: float | None) -> str:
        """Why a guidance interval was asked for a draw that is not guided: an interval
        that silently did nothing would look like a setting that works."""
        if guidance == 1.0:
            why = "guidance 1 is the conditional model alone (one network call a step)"
            fix = "give guidance above 1 (e.g. 3), or drop the interval"
        elif self.guide is not None:
            why = "this draw is unguided (autoguidance 1 is the model alone)"
            fix = "give autoguidance above 1 (e.g. 2), or drop the interval"
        elif not self.conditional:
            why = "this checkpoint is unconditional, so there is nothing to guide toward"
            fix = "drop the interval"
        elif not conditioned:
            why = "guidance needs a class or a prompt, and none was given"
            fix = "give one, or drop the interval"
        else:
            why = "this checkpoint samples without guidance by default"
            fix = "give guidance too (e.g. 3), or drop the interval"
        return f"a guidance interval needs guidance, and {why}: {fix}"

    # ------------------------------------------------------------------ conditioning
    def resolve_labels(self, classes: list[str | int] | str | int | None, n: int
                       ) -> Tensor | None:
        """Class names / indices (or one of them; "all": every class in turn) -> label
        tensor of length n (cycled), or None. More classes than n is refused: the last ones
        would not be drawn."""
        if classes is None:
            return None
        every = bool(names_every_class(classes) and self.num_classes)
        if every:
            classes = list(range(self.num_classes))
        elif isinstance(classes, str | int | np.integer) and not isinstance(classes, bool):
            classes = [classes]
        elif not isinstance(classes, list | tuple | np.ndarray | Tensor):
            raise ValueError(f"classes must be a class name or index, or a list of them, got "
                             f"{type(classes).__name__} {classes!r}")
        if len(classes) == 0:
            raise ValueError("classes is an empty list; give at least one class, or leave "
                             "classes out (None) to draw without one")
        if self.num_classes is None:
            kind = ("text-conditional: it takes a prompt, not a class" if self.takes_text
                    else "unconditional: it takes no class")
            raise ValueError(f"this checkpoint is {kind}; leave the class out")
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        aliases = class_aliases(self.dataset, self.class_names)
        idx = [resolve_class(c, names, aliases) for c in classes]
        if len(idx) > n:  # cycled over n samples, the last ones would not be drawn
            what = f"every class ({len(idx)})" if every else f"{len(idx)} classes"
            raise ValueError(f"{what} for {n} sample{'s' if n != 1 else ''}: the samples take "
                             f"them in turn; draw at least {len(idx)}")
        return torch.tensor([idx[i % len(idx)] for i in range(n)], device=self.device)

    def class_labels(self, classes: list[str | int]) -> list[str]:
        """The name of each class (a name, alias or index) as grids label their rows; fails
        on an unknown class."""
        names = self.class_names or [str(i) for i in range(self.num_classes or 0)]
        return [names[i] for i in self.resolve_labels(classes, len(classes)).tolist()]

    def _prompts(self, prompt: str | list[str] | None, n: int, what: str) -> list[str] | None:
        """A prompt (or a list, cycled) for each of n samples; None stays None."""
        if prompt is None:
            return None
        if not self.takes_text:
            raise ValueError(f"this checkpoint takes no text: drop {what}")
        if not isinstance(prompt, str | list | tuple):
            raise ValueError(f"{what} must be a string or a list of strings, got "
                             f"{type(prompt).__name__} {prompt!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError(f"{what} is an empty list; give at least one prompt")
        for p in prompts:
            check_text(p, what)
            if not p.strip():  # the encoder's own message speaks of its null(n)
                raise ValueError(f"{what} {p!r} is empty or only whitespace; to draw without "
                                 f"text, leave {what} out (None)")
        if len(prompts) > n:  # cycled over n samples, the last ones would not be drawn
            raise ValueError(f"{len(prompts)} {what}s for {n} sample{'s' if n != 1 else ''}: "
                             f"the samples take them in turn; draw at least {len(prompts)}")
        return [prompts[i % len(prompts)] for i in range(n)]

    def nearest_captions(self, requested: int | None = None) -> int:
        """How many training captions each prompt is read through (0: none; see
        :mod:`difflab.models.caption_bank`). None: the run's ``text.nearest_captions`` when the
        checkpoint has a caption bank, else 0."""
        if requested is None:
            if self.caption_bank is None:
                return 0
            return min(self._text_settings().nearest_captions, len(self.caption_bank.texts))
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise ValueError(f"nearest_captions must be an integer >= 0, got {requested!r}")
        if requested > 0 and self.caption_bank is None:
            raise ValueError(
                "nearest_captions needs a checkpoint with a caption bank (a text model trained "
                "with text.tokens = 'pooled'); this one has none: use nearest_captions=0"
            )
        if self.caption_bank is not None and requested > len(self.caption_bank.texts):
            raise ValueError(f"nearest captions k={requested} is out of range: allowed "
                             f"1..{len(self.caption_bank.texts)} (the captions in the bank), "
                             "or 0: off")
        return requested

    def _text_settings(self) -> TextConfig:
        """The run's [text] settings, with the defaults of this code for keys it lacks."""
        return config_from_dict(self.config.get("run", {})).text

    def read_prompts(self, prompts: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``k`` training captions nearest each prompt, with cosine similarities: what
        the model reads a prompt as when sampling through the caption bank."""
        if self.caption_bank is None:
            raise ValueError("this checkpoint has no caption bank to read prompts through")
        queries = self.text_encoder.encode(prompts).tokens[:, 0]
        return self.caption_bank.nearest(queries, min(k, len(self.caption_bank.texts)))

    def prompt_readings(self, prompts: list[str], k: int = 3) -> list[str]:
        """A line per prompt (each once) saying which ``k`` training captions it is read as,
        so that a surprising picture can be explained; `difflab sample` prints them."""
        unique = list(dict.fromkeys(prompts))
        lines = []
        for prompt, near in zip(unique, self.read_prompts(unique, k), strict=True):
            lines.append(f"{quote_prompt(prompt)} reads as the training captions "
                         f"{show_captions(near)}")
        return lines

    def prompt_familiarity(self, prompts: list[str]) -> Tensor:
        """Each prompt's cosine similarity to its nearest training caption, (len(prompts),):
        how close it is to anything the model learned (CaptionBank.familiarity)."""
        if self.caption_bank is None:
            raise ValueError("this checkpoint has no caption bank to compare prompts with")
        return self.caption_bank.familiarity(self.text_encoder.encode(prompts).tokens[:, 0])

    def unfamiliar_prompts(self, prompts: list[str], k: int = 3) -> list[UnfamiliarPrompt]:
        """The prompts (each once) outside what the model was trained on: below
        OUT_OF_DOMAIN_BELOW in familiarity, with the ``k`` captions nearest each; or, for a
        dataset whose captions come from a grammar (shapes), those the grammar cannot read,
        with what it could not read. Empty for a model with neither (nothing to compare with)
        or without prompts."""
        prompts = list(dict.fromkeys(prompts))
        if not prompts:
            return []
        if self.caption_bank is None:
            return self._unreadable_prompts(prompts)
        familiar = self.prompt_familiarity(prompts)
        far = [i for i, v in enumerate(familiar.tolist()) if v < OUT_OF_DOMAIN_BELOW]
        if not far:
            return []
        nearest = self.read_prompts([prompts[i] for i in far], k)
        return [UnfamiliarPrompt(prompts[i], float(familiar[i]), near)
                for i, near in zip(far, nearest, strict=True)]

    def _unreadable_prompts(self, prompts: list[str]) -> list[UnfamiliarPrompt]:
        """The prompts the training captions' grammar cannot read, if the dataset has one."""
        read = prompt_reader(self.dataset, self.config.get("run", {}).get("data", {}))
        if read is None or self.text_encoder is None:
            return []
        far = []
        for prompt in prompts:
            try:
                read(prompt)
            except ValueError as e:
                far.append(UnfamiliarPrompt(prompt, None, [], reason=str(e)))
        return far

    def _text(self, prompts: list[str] | None, n: int, nearest: int = 0) -> TextCondition:
        """Encoded prompts (read through the ``nearest`` nearest training captions when > 0),
        or the "no text" condition of classifier-free guidance."""
        if not prompts:
            enc = self.text_encoder.null(n)
            return TextCondition(enc.tokens.to(self.device), enc.mask.to(self.device))
        enc = self.text_encoder.encode(prompts)
        tokens = enc.tokens
        if nearest > 0:  # a caption bank exists only for sentence-embedding ("pooled") models
            temperature = self._text_settings().caption_temperature
            tokens = self.caption_bank.project(tokens[:, 0], nearest, temperature)[:, None]
        return TextCondition(tokens.to(self.device), enc.mask.to(self.device))

    def denoiser(
        self,
        labels: Tensor | None = None,
        guidance: float | None = None,
        clip: str | None = "static",
        *,
        text: TextCondition | None = None,
        negative: TextCondition | None = None,
        guidance_interval: tuple[float, float] | None = None,
        autoguidance: float | None = None,
    ) -> Denoiser:
        """The (guided, clipped) denoiser for one batch. With text, the unconditional branch
        of guidance is `negative` (a negative prompt's tokens, as in Stable Diffusion) or no
        text at all. `guidance_interval`: guide (either way) only at those noise levels
        (GuidedDenoiser), calling the second network only there.
        `autoguidance` w: D_guide + w (D - D_guide) with the guide network on the same condition
        (Karras et al. 2024, eq. 3), in place of classifier-free guidance."""
        return self._denoiser(self.net, self.guide, labels, guidance, clip, text=text,
                              negative=negative, guidance_interval=guidance_interval,
                              autoguidance=autoguidance)

    def _denoiser(self, net: torch.nn.Module, guide: torch.nn.Module | None,
                  labels: Tensor | None, guidance: float | None, clip: str | None, *,
                  text: TextCondition | None, negative: TextCondition | None,
                  guidance_interval: tuple[float, float] | None,
                  autoguidance: float | None) -> Denoiser:
        """:meth:`denoiser` on the given networks (the model's own, or them compiled)."""
        cond = text if text is not None else labels
        den: Denoiser = network_denoiser(net, self.process, self.parameterization, cond=cond)
        if autoguidance is not None and autoguidance != 1.0:  # 1: the model alone, one call
            if guide is None or guidance is not None:
                raise ValueError("autoguidance needs the checkpoint's guide and no guidance")
            bad = network_denoiser(guide, self.process, self.parameterization, cond=cond)
            den = GuidedDenoiser(den, bad, autoguidance, guidance_interval)
        elif guidance is not None:
            if text is not None:
                b = text.tokens.shape[0]
                uncond_cond = negative if negative is not None else self._text(None, b)
            elif labels is not None:
                uncond_cond = torch.full_like(labels, self.num_classes)
            else:
                raise ValueError(GUIDANCE_NEEDS_CONDITION)
            uncond = network_denoiser(net, self.process, self.parameterization, uncond_cond)
            den = GuidedDenoiser(den, uncond, guidance, guidance_interval)
        elif negative is not None:
            raise ValueError("a negative prompt needs guidance (guidance > 1; e.g. 3)")
        if clip is not None:
            den = ThresholdedDenoiser(den, clip)
        return den

    def _attention_guidance(self, key: str, given: float | None, conditioned: bool,
                            source: dict, defaults: dict) -> float | None:
        """The scale of relation or binding guidance (`key`) a draw uses (None: off), its
        source noted in `source`."""
        if given is not None:
            source[key] = "given"
            return given or None
        if conditioned and key in defaults:
            source[key] = "checkpoint"
            return defaults[key]
        return None

    def _relation_regions(self, given: bool | None, conditioned: bool, source: dict,
                          defaults: dict) -> bool:
        """Whether a draw uses relation regions, its source noted in `source`."""
        if given is not None:
            if not isinstance(given, bool):
                raise ValueError(f"relation_regions must be True or False, got {given!r}")
            if given and not self.takes_text:
                raise ValueError("relation regions draw the phrases of a prompt: this "
                                 "checkpoint takes no text")
            if given and not self.takes_crops:
                raise ValueError("relation regions draw each phrase on a crop of the picture, "
                                 "and this checkpoint's network (a DiT) takes only its own "
                                 "image size")
            source["relation_regions"] = "given"
            return given
        if conditioned and defaults.get("relation_regions"):
            source["relation_regions"] = "checkpoint"
            return True
        return False

    @property
    def takes_crops(self) -> bool:
        """Whether the network takes crops of its image size (a UNet; not a DiT), as
        relation regions need."""
        return bool(getattr(self.net, "takes_any_size", False))

    @property
    def takes_attention_guidance(self) -> bool:
        """Whether relation and binding guidance apply: a text model reading the pretrained
        encoder's word pieces, whose cross-attention to each word can be read."""
        encoder = self.text_encoder
        return getattr(encoder, "tokens", None) == "all" and hasattr(encoder, "piece_spans")

    def _check_attention_guidance(self, key: str, scale: float,
                                  prompts: list[str] | None) -> None:
        what = key.replace("_", " ")
        if (isinstance(scale, bool) or not isinstance(scale, (int, float))
                or not (math.isfinite(scale) and 0 <= scale <= MAX_ATTENTION_GUIDANCE)):
            raise ValueError(f"{what} must be a number from 0 to {MAX_ATTENTION_GUIDANCE:g} "
                             f"(0: off), got {scale!r}")
        if scale == 0:  # off
            return
        if not self.takes_attention_guidance:
            raise ValueError(
                f"{what} reads where each word is drawn from a text model's "
                "cross-attention to the pretrained encoder's word pieces (text.tokens = 'all'); "
                "this checkpoint has none"
            )
        if prompts is None:
            raise ValueError(f"{what} steers what a prompt says, e.g. 'a red circle to the "
                             "left of a blue square': give one")

    def _attention_guided(self, den: Denoiser, text: TextCondition, prompts: list[str],
                          relation: float | None, binding: float | None) -> Denoiser:
        """`den` with relation and binding guidance read from the model's own conditional
        network (difflab.pipeline.attention_guidance)."""
        longest = max(len(self.text_encoder.piece_spans(p)) for p in prompts)
        offset = text.tokens.shape[1] - longest  # the tokens before the word pieces
        parts: list[list[SampleEnergy]] = [[] for _ in prompts]
        if relation:
            for b, target in enumerate(relation_targets(self.text_encoder, prompts, offset)):
                if target is not None:
                    parts[b].append(scaled_energy(relation, relation_energy, target))
        if binding:
            for b, target in enumerate(binding_targets(self.text_encoder, prompts, offset)):
                if target is not None:
                    parts[b].append(scaled_energy(binding, binding_energy, target))
        energies = [summed_energy(p) if p else None for p in parts]
        conditional = network_denoiser(self.net, self.process, self.parameterization, cond=text)
        return AttentionGuidedDenoiser(den, self.net, conditional, energies)

    def _with_regions(self, den: Denoiser, settings: SamplingSettings, prompts: list[str],
                      negatives: list[str] | None, nearest: int) -> Denoiser:
        """`den` drawing the prompts that are one relation by regions
        (difflab.pipeline.relation_regions), each phrase guided as the run is. The crops run
        the eager networks: a compiled one is built for the whole picture's shape."""
        phrases = [read if read is not None and self._fits(read.first)
                   and self._fits(read.second) else None
                   for read in map(region_phrases, prompts)]
        if not any(phrases):
            return den

        def phrase_denoiser(texts: list[str], samples: list[int]) -> Denoiser:
            k = len(texts)
            negative = (self._text([negatives[s] for s in samples], k, nearest)
                        if negatives else None)
            return self._denoiser(self.net, self.guide, None, settings.guidance, None,
                                  text=self._text(texts, k, nearest), negative=negative,
                                  guidance_interval=settings.guidance_interval,
                                  autoguidance=settings.autoguidance)

        return RelationRegionsDenoiser(den, phrases, phrase_denoiser, self.model_shape)

    def _fits(self, text: str) -> bool:
        """Whether the text encoder reads all of `text` (a phrase cut short may lose its
        object); an encoder that does not say how it splits words is trusted."""
        spans = getattr(self.text_encoder, "piece_spans", None)
        return spans is None or len(spans(text)) < self.text_encoder.max_tokens

    def _clip(self, clip: str | None) -> str | None:
        # Scaled latents are not confined to [-1, 1]: clipping them would distort every image.
        if clip == "auto":
            return None if self.autoencoder is not None else "static"
        return clip

    def to_pixels(self, x: Tensor) -> Tensor:
        """Model-space samples -> uint8 pixels (decoding latents first)."""
        x = x.float()
        if self.autoencoder is not None:
            x = self.autoencoder.from_latent(x)
        return to_uint8(x.cpu())

    def to_model_space(self, images: Any, what: str = "image") -> Tensor:
        """uint8 / PIL / array images -> model-space tensors (encoded latents for a latent
        model: the posterior mean, scaled)."""
        x = as_image_tensor(images, self.image_shape, what).to(self.device)
        x = x.float() / 127.5 - 1.0
        if self.autoencoder is not None:
            x = self.autoencoder.encode(x).mode() * self.autoencoder.scale_factor
        return x

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate_batches(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        clip: str | None = "auto",
        classes: list | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        autoguidance: float | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        spacing: str | None = None,
        sigma_max: float | None = None,
        rho: float | None = None,
        callback: Callable[[dict], None] | None = None,
        precision: str = "fp32",
        init: Tensor | None = None,
        strength: float = 1.0,
        mask: Tensor | None = None,
        first: int = 0,
        nearest_captions: int | None = None,
        progress: bool = False,
        compile: bool = False,
        relation_guidance: float | None = None,
        binding_guidance: float | None = None,
        relation_regions: bool | None = None,
        **options: Any,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield (uint8 images, labels) batch by batch, so 10,000 images never sit in memory.

        Sample i of a run is drawn from its own generator, seeded by (seed, i): the same
        seed gives the same images at any batch size. `first` is the index of the first
        sample, so that shards drawn apart (processes, ranks: samples first..first+n-1 each)
        together are exactly one run's images.

        sampler, steps and guidance left None come from the checkpoint's [sample] settings
        (:meth:`sampling_settings`: another sampler than the checkpoint's gets its own default
        steps; guidance applies when a class or prompt is given; guidance=1 is the plain
        conditional model; `guidance_interval` (low, high) guides only at those noise levels,
        the checkpoint's when None); `autoguidance` w guides with the checkpoint's guide
        network instead (the checkpoint's [sample] autoguidance when None and it has a guide).
        spacing defaults per sampler (difflab.samplers.DEFAULTS); `sigma_max` and `rho` shape
        a Karras grid (difflab.samplers.default_timesteps; None: the checkpoint's with its own
        sampler, else the sampler's);
        `options` go to the sampler (eta=, variance=, ...; ddim gets the checkpoint's eta
        unless given). clip "auto": static for pixel models, none for latent ones.

        `init` (model-space, from `to_model_space`) with `strength` < 1 starts from the
        noised init (img2img); `mask` (model-space, 1 = generate) keeps the rest of `init`.
        `nearest_captions`: see :meth:`nearest_captions` (prompts and negative prompts alike).
        `progress`: a tqdm bar on stderr over every batch's steps, with the network
        evaluations so far (:class:`SamplingProgress`); off by default, the library is quiet.
        `compile`: run the networks through torch.compile (:class:`CompiledNetwork`; worth it
        only for long jobs: :func:`~difflab.pipeline.compiled.choose_compile` says when).
        `precision`: "fp32", or "bf16" (the network under autocast; faster only where the
        hardware runs bf16 natively). `callback`: a function called with each step's state
        (a dict: "x", "i", "t", "denoised", ...; :class:`~difflab.viz.FrameRecorder` is one).
        `relation_guidance` s: steer a prompt's two objects to the relation it names with the
        model's cross-attention maps (:mod:`~difflab.pipeline.relation_guidance`; 0: off;
        prompts without a relation are sampled as without it); `binding_guidance` s:
        draw each modifier ("red") on its own noun and not on the others
        (:mod:`~difflab.pipeline.binding_guidance`; prompts of two objects or more);
        `relation_regions`: draw each phrase of a prompt that is one relation in its own region
        of the picture first (:mod:`~difflab.pipeline.relation_regions`). All three left None
        are the checkpoint's [sample] settings.
        """
        check_sampling_inputs(n, steps, guidance, batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not (
                0 <= seed <= MAX_SEED):
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise ValueError(f"first (the index of a sample) must be an int >= 0, got {first!r}")
        check_strength(strength)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (bf16 runs the "
                             f"network under autocast), got {precision!r}")
        if callback is not None and not callable(callback):
            raise ValueError(f"callback must be a function of one dict (each step's state), "
                             f"got {type(callback).__name__} {callback!r}")
        clip = self._clip(clip)
        labels_all = self.resolve_labels(classes, n)
        prompts = self._prompts(prompt, n, "prompt")
        for key, scale in (("relation_guidance", relation_guidance),
                           ("binding_guidance", binding_guidance)):
            if scale is not None:
                self._check_attention_guidance(key, scale, prompts)
        negatives = self._prompts(negative_prompt, n, "negative_prompt")
        if negatives is not None and prompts is None:  # before guidance, which it would ask for
            raise ValueError("a negative prompt steers a prompt away from itself: give a "
                             "prompt too")
        nearest = self.nearest_captions(nearest_captions)
        for far in self.unfamiliar_prompts(prompts or []):
            warnings.warn(OutOfDomainPrompt(far), stacklevel=_callers_level())
        settings = self.sampling_settings(
            sampler, steps, guidance, conditioned=labels_all is not None or prompts is not None,
            guidance_interval=guidance_interval, autoguidance=autoguidance,
            sigma_max=sigma_max, rho=rho, relation_guidance=relation_guidance,
            binding_guidance=binding_guidance, relation_regions=relation_regions,
        )
        sampler, steps, guidance = settings.sampler, settings.steps, settings.guidance
        if negatives is not None and guidance == 1:  # w = 1 calls only the prompt's branch
            warnings.warn("a negative prompt acts through guidance, and guidance 1 draws from "
                          "the prompt alone, so it changes nothing: raise guidance (e.g. 3)",
                          stacklevel=_callers_level())
        relation_guidance = settings.relation_guidance
        binding_guidance = settings.binding_guidance
        if settings.relation_regions and prompts is None:
            raise ValueError("relation regions draw the phrases of a prompt, e.g. 'a red "
                             "circle to the left of a blue square': give one")
        if settings.eta is not None:
            options.setdefault("eta", settings.eta)
        fn = get_sampler(sampler)
        for theirs, ours in DIFFUSERS_NAMES.items():
            if theirs in options:
                raise ValueError(f"generate() takes no {theirs} (diffusers' name): give {ours}=")
        check_sampler_options(sampler, options, "generate()", _OWN_KEYWORDS)
        if self.takes_text and prompts is None and guidance is not None:
            raise ValueError("guidance on a text model needs a prompt")
        timesteps = default_timesteps(
            sampler, self.process, steps, spacing, settings.sigma_max, settings.rho or 7.0
        )
        if strength < 1.0:
            if init is None:
                raise ValueError("strength < 1 needs an init image (img2img)")
            timesteps = truncate_timesteps(timesteps, self.process, strength)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else nullcontext()
        )
        net, guide = self.net, self.guide
        if compile:
            net = CompiledNetwork(net)
            guide = CompiledNetwork(guide) if guide is not None else None
        # The bar counts the network's forward calls (a guided step makes two) until closed.
        bar = (
            SamplingProgress(net, n, batch_size, len(timesteps),
                             others=(guide,) if guide is not None else ())
            if progress else None
        )
        step_callback = bar.wrap(callback) if bar is not None else callback
        try:
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                if bar is not None:
                    bar.next_batch(b)
                gens = per_sample_generators(seed, b, offset=first + start)
                labels = labels_all[start : start + b] if labels_all is not None else None
                text = self._text(prompts[start : start + b], b, nearest) if prompts else None
                negative = (
                    self._text(negatives[start : start + b], b, nearest) if negatives else None
                )
                den = self._denoiser(  # clipped below, after any attention guidance
                    net, guide, labels, guidance, None, text=text, negative=negative,
                    guidance_interval=settings.guidance_interval,
                    autoguidance=settings.autoguidance,
                )
                noise = randn((b, *self.model_shape), gens, self.device)
                x0_init = None
                if init is not None:
                    x0_init = (
                        init[start : start + b] if len(init) == n else init.expand(b, -1, -1, -1)
                    )
                if relation_guidance or binding_guidance:
                    den = self._attention_guided(den, text, prompts[start : start + b],
                                                 relation_guidance, binding_guidance)
                if settings.relation_regions:
                    den = self._with_regions(
                        den, settings, prompts[start : start + b],
                        negatives[start : start + b] if negatives else None, nearest)
                if clip is not None:  # the prediction sampled, guided or not, is the one clipped
                    den = ThresholdedDenoiser(den, clip)
                if mask is not None:
                    den = InpaintingDenoiser(den, x0_init, mask)
                t0 = timesteps[0].to(self.device)
                if x0_init is not None and strength < 1.0:
                    x = self.process.q_sample(x0_init, t0.expand(b), noise)  # SDEdit's start
                else:
                    x = noise * self.process.prior_std()
                with autocast:
                    out = fn(den, x, timesteps, generator=gens, callback=step_callback, **options)
                yield self.to_pixels(out), (labels.cpu() if labels is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def generate(self, n: int, **kwargs: Any) -> Tensor:
        """n images as a uint8 tensor (n, C, H, W); keyword arguments as generate_batches."""
        return torch.cat([b for b, _ in self.generate_batches(n, **kwargs)])

    def img2img(
        self,
        image: Any,
        prompt: str | list[str] | None = None,
        strength: float = DEFAULT_IMG2IMG_STRENGTH,
        n: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Re-draw `image` toward `prompt`: encode it, noise it to time strength * t_max,
        denoise from there (SDEdit, Meng et al. 2022). strength 0 returns the image (through
        the autoencoder), 1 ignores it; the default is DEFAULT_IMG2IMG_STRENGTH.

        `image`: one image or a batch in any usual form (:func:`as_image_tensor`: a path, a
        PIL image, a numpy array or torch tensor (H, W), (C, H, W), (H, W, C), (N, C, H, W),
        ..., uint8 0..255 or float 0..1 / -1..1). `n`: how many results; one image is
        re-drawn n times, a batch gives one result per image (n may be omitted)."""
        check_strength(strength)
        pixels = as_image_tensor(image, self.image_shape, "image")
        n = result_count(n, len(pixels), "images")
        init = self.to_model_space(pixels)
        if strength == 0.0:
            return self.to_pixels(init.expand(n, -1, -1, -1) if len(init) == 1 else init)
        return self.generate(n, prompt=prompt, init=init, strength=strength, **kwargs)

    def inpaint(
        self,
        image: Any,
        mask: Any,
        prompt: str | list[str] | None = None,
        n: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Fill the region of `image` where `mask` is set and keep the rest exactly.

        `image`: any form :func:`as_image_tensor` takes. `mask`: white = generate (True, or
        at least half of white: 0.5 of 1, 128 of 255; a path or PIL image; (H, W), (N, H, W),
        (N, 1, H, W); see :func:`as_mask_tensor`), the image's size. One image and one mask
        give n results; a batch of images or of masks (or both, of the same length) one result
        each.

        At every step the known region of the denoiser's x0 prediction is replaced by the
        encoded image, so every sampler keeps it (a latent mask is the pixel mask max-pooled
        to the latent grid); the decoded result is then composited with the original pixels
        outside the mask, so they come back unchanged."""
        pixels = as_image_tensor(image, self.image_shape, "image")
        pmask = as_mask_tensor(mask, self.image_shape)
        if len(pixels) > 1 and len(pmask) > 1 and len(pixels) != len(pmask):
            raise ValueError(
                f"{len(pmask)} masks for {len(pixels)} images; give one mask for all, or "
                "one per image"
            )
        n = result_count(n, max(len(pixels), len(pmask)), "images" if len(pixels) > 1 else "masks")
        init = self.to_model_space(pixels)
        lmask = pmask.float().to(self.device)
        if self.autoencoder is not None:
            side = self.model_shape[-1]
            lmask = torch.nn.functional.adaptive_max_pool2d(lmask, side)
        if len(lmask) > 1:
            # generate_batches slices init per batch but hands the mask over whole: one mask
            # per image needs all n in one batch. Same seed, same images at any batch size.
            kwargs["batch_size"] = max(kwargs.get("batch_size", 256), n)
        out = self.generate(n, prompt=prompt, init=init, mask=lmask, **kwargs)
        keep = ~pmask.expand(n, *self.image_shape).cpu()
        return torch.where(keep, pixels.expand(n, -1, -1, -1).cpu(), out)

    def generate_to_npz(self, path: str | Path, n: int, **kwargs: Any) -> Path:
        """Stream n samples into an .npz with `images` uint8 (N, C, H, W), plus `labels` of a
        class model and, for a prompt, `prompts` (one string per image, what `difflab eval
        --images FILE --geneval` reads). The samples stream through PATH's `.images.npy`
        twin, which goes at the end. Refused before any sampling: another suffix than .npz, a
        folder that does not exist, and a file at PATH (or its twins) that difflab did not
        write, which it never replaces."""
        path = Path(path)
        scratch = npz_scratch_files(path)
        _check_npz_path(path, scratch)
        prompts = self._prompts(kwargs.get("prompt"), n, "prompt")
        images = np.lib.format.open_memmap(
            scratch[0], mode="w+", dtype=np.uint8, shape=(n, *self.image_shape)
        )
        labels = np.zeros(n, dtype=np.int64)
        has_labels, i = False, 0
        for batch, lab in self.generate_batches(n, **kwargs):
            images[i : i + len(batch)] = batch.numpy()
            if lab is not None:
                labels[i : i + len(batch)], has_labels = lab.numpy(), True
            i += len(batch)
        images.flush()
        arrays = {"images": images, MARK_KEY: np.array(MARK)}  # what may replace it
        if has_labels:
            arrays["labels"] = labels
        if prompts is not None:
            arrays["prompts"] = np.array(prompts)  # a unicode array: loads without pickles
        np.savez(scratch[1], **arrays)
        scratch[1].replace(path)
        del images
        scratch[0].unlink()
        return path


def npz_scratch_files(path: Path) -> tuple[Path, Path]:
    """The files Generator.generate_to_npz writes beside PATH.npz while it works: the samples
    streamed to disk, then the archive before it is renamed into place."""
    return path.with_suffix(".images.npy"), path.with_name(path.name + ".tmp.npz")


def _check_npz_path(path: Path, scratch: tuple[Path, ...]) -> None:
    """What generate_to_npz refuses before it samples (its docstring)."""
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: samples are written as an .npz file; give a path ending in "
                         ".npz")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist; make it first")
    if os.path.lexists(path) and (path.is_symlink() or not written_by_difflab(path)):
        raise ValueError(f"{path} exists and difflab did not write it, so difflab leaves it "
                         "alone; give another file name, or move that file away")
    for twin in scratch:
        if os.path.lexists(twin):
            raise ValueError(f"{path}: {twin} exists, and the samples stream through a file of "
                             "that name; move it away or choose another path")


# Frames of these packages are passed over when a warning names the line that caused it.
_OWN_CODE = (str(Path(__file__).parents[1]), str(Path(torch.__file__).parent))


def _callers_level() -> int:
    """The `stacklevel` of the first frame outside difflab and torch: a warning from
    generate() names the user's line, not torch's no_grad wrapper of the generator (the
    fixed stacklevel=2 pointed into torch/utils/_contextlib.py)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OWN_CODE):
        frame, level = frame.f_back, level + 1
    return level


# generate()'s own keywords, named beside the sampler's options when one is misspelt
_OWN_KEYWORDS = tuple(name for name, p in inspect.signature(Generator.generate_batches)
                      .parameters.items() if p.kind == p.KEYWORD_ONLY)


def _class_names(config: dict[str, Any], source: str) -> list[str] | None:
    """A checkpoint's class names, checked: untrusted input, and every label a sample, a
    title or the web app's menu shows comes from them. One name (a string) per class of the
    network, or none."""
    names, count = config.get("class_names"), config["network"].get("num_classes")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{source}: 'class_names' must be a list of strings, got "
                              f"{names!r:.60}")
    if count is not None and len(names) != count:
        raise CheckpointError(f"{source}: 'class_names' names {len(names)} classes and the "
                              f"network has {count}; one name per class is allowed")
    return names

