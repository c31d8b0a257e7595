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

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflab.argtypes import MAX_GUIDANCE, MAX_STEPS, Range
from difflab.build import build_process, network_from_spec
from difflab.config import TextConfig, config_from_dict
from difflab.data import class_aliases
from difflab.data.base import resolve_class
from difflab.diffusion.denoiser import Denoiser, ModelDenoiser, Prediction, ThresholdedDenoiser
from difflab.guidance import GuidedDenoiser
from difflab.hardware import pick_device
from difflab.models.caption_bank import COMPONENT as CAPTION_BANK
from difflab.models.caption_bank import CaptionBank
from difflab.models.unet import TextCondition
from difflab.samplers import default_steps, default_timesteps, get_sampler
from difflab.samplers.common import per_sample_generators, randn
from difflab.training.checkpoint import checkpoint_candidates, load_checkpoint, load_weights_into
from difflab.viz import to_uint8

Tensor = torch.Tensor

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# The sampler of a Generator without a run config (one over a live trainer's weights):
# DPM-Solver++(2M) at its default 20 steps matches DDIM at 50 on FID (BENCHMARKS.md, "FID
# against network evaluations").
FALLBACK_SAMPLER = "dpmpp_2m"

# img2img's default strength: the smallest strength whose class-change rate reaches 80 % of the
# largest measured, chosen on one half of the images of a sweep and checked on the other
# (bench/img2img_strength.py, BENCHMARKS.md "img2img: the default strength"). On fashion-text,
# 0.9 redraws 81 % / 91 % (select / check half) of images as the prompt's class; 0.6 only 17 %,
# and 0.8 (66 % / 75 %, SSIM to the input 0.24 against 0.11) missed the bar by one image.
DEFAULT_IMG2IMG_STRENGTH = 0.9


@dataclass(frozen=True)
class SamplingSettings:
    """What a sampling run uses, and where each setting came from (`source`: "given" by the
    caller, "checkpoint" for its [sample] settings, "default" for the sampler's own DEFAULTS
    or FALLBACK_SAMPLER). `guidance` has a source only when it applies: given, or a
    conditional model asked for a class or prompt."""

    sampler: str
    steps: int
    guidance: float | None
    eta: float | None  # the checkpoint's DDIM eta when its sampler runs, else None
    source: dict[str, str]


class NetworkProgress:
    """A tqdm bar on stderr that also counts a network's forward calls, the cost of sampling
    or of a likelihood bound: "network evaluations" in the bar's postfix.

    The count comes from a forward pre-hook on `net` (removed by `close`), so a guided step
    counts two and an adaptive ODE solver's rejected steps count too. The count is redrawn at
    most every `REDRAW_S` seconds between the bar's own updates, so that one long unit of work
    (a batch of a 1,000-term bound) is not a silent minute.
    """

    REDRAW_S = 0.5

    def __init__(self, net: torch.nn.Module, desc: str, total: int | None, unit: str):
        self.nfe = 0
        self.bar = tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self._drawn = time.monotonic()
        self._hook = net.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: Any) -> None:
        self.nfe += 1
        self.bar.set_postfix_str(f"{self.nfe:,} network evaluations", refresh=False)
        if time.monotonic() - self._drawn > self.REDRAW_S:
            self.bar.refresh()
            self._drawn = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.bar.update(k)

    def close(self) -> None:
        self._hook.remove()
        self.bar.close()


class SamplingProgress(NetworkProgress):
    """The progress of a sampling run: one bar over the sampler's steps of every batch, which
    names the batch and counts the network evaluations (:class:`NetworkProgress`)."""

    def __init__(self, net: torch.nn.Module, n: int, batch_size: int, steps: int | None = None):
        """steps: the sampler's steps per batch, if known (the first callback's `total`
        corrects it: an adaptive ODE solver knows none)."""
        self.n, self.batches, self.batch, self._sized = n, -(-n // batch_size), 0, False
        total = steps * self.batches if steps else None
        super().__init__(net, self._desc(1, min(n, batch_size)), total, "step")

    def _desc(self, k: int, b: int) -> str:
        images = f"{b} image" + ("s" if b != 1 else "")
        if self.batches == 1:
            return f"sampling {images}"
        return f"sampling batch {k}/{self.batches} ({images})"

    def next_batch(self, b: int) -> None:
        self.batch += 1
        self.bar.set_description(self._desc(self.batch, b), refresh=False)

    def step(self, info: dict) -> None:
        """A sampler callback: one step done (its `total` sizes the bar on the first call)."""
        if not self._sized:
            total = info.get("total")
            self.bar.total = int(total) * self.batches if total else None
            self._sized = True
        self.update(1)

    def wrap(self, callback: Callable[[dict], None] | None) -> Callable[[dict], None]:
        """A callback that calls `callback` (if any), then counts the step."""
        def both(info: dict) -> None:
            if callback is not None:
                callback(info)
            self.step(info)

        return both


def resolve_checkpoint(name: str | Path) -> Path:
    """A checkpoint folder, or the name of one shipped with difflab (e.g. 'fashion-mnist')."""
    p = Path(name)
    if p.is_dir():
        return p
    if any(c.is_dir() for c in checkpoint_candidates(p)[1:]):
        return p  # a crash left an earlier complete one: load_checkpoint takes it, and warns
    if (WEIGHTS_DIR / str(name)).is_dir():
        return WEIGHTS_DIR / str(name)
    shipped = sorted(d.name for d in WEIGHTS_DIR.glob("*") if d.is_dir())
    raise FileNotFoundError(
        f"checkpoint {str(name)!r} not found; give a checkpoint folder or "
        f"one of the shipped models: {', '.join(shipped) or 'none'}"
    )


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
    ):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
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
        autoencoder = text_encoder = caption_bank = None
        if kind == "latent-diffusion":
            from difflab.latent import autoencoder_from_weights

            if "autoencoder" not in ck.components:
                raise ValueError(f"{path} is a latent diffusion model without its autoencoder")
            autoencoder = autoencoder_from_weights(
                ck.config["autoencoder"]["network"], ck.components["autoencoder"], str(path)
            )
        if ck.config.get("text_encoder"):
            from difflab.models.text import TextConditioned, text_encoder_from_spec

            if isinstance(net, TextConditioned):  # trained with the net: its weights are there
                text_encoder = net.text
            else:  # a frozen pretrained encoder: rebuilt from its package
                text_encoder = text_encoder_from_spec(ck.config["text_encoder"])
        if CAPTION_BANK in ck.components:
            caption_bank = CaptionBank.from_state_dict(ck.components[CAPTION_BANK], str(path))
        device = pick_device(device).device  # CUDA, then MPS, then the CPU
        return cls(
            net.float(),
            build_process(run.diffusion),
            run.diffusion.parameterization,
            tuple(ck.config.get("model_shape", ck.config["image_shape"])),
            class_names=ck.config.get("class_names"),
            num_classes=ck.config["network"].get("num_classes"),
            config=ck.config,
            device=device,
            autoencoder=autoencoder,
            text_encoder=text_encoder,
            caption_bank=caption_bank,
        )

    @property
    def takes_text(self) -> bool:
        return self.text_encoder is not None

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
        return out

    def sampling_settings(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        *,
        conditioned: bool = False,
    ) -> SamplingSettings:
        """Fill what the caller left None from :meth:`sample_defaults`.

        Steps and eta belong to the checkpoint's sampler: another sampler with no steps given
        takes its own default steps (difflab.samplers.DEFAULTS), not the ones tuned for a
        different solver. The checkpoint's guidance applies only when `conditioned` (a class
        or prompt is asked for): an unconditional draw has nothing to guide toward."""
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
        if guidance is not None:
            source["guidance"] = "given"
        elif conditioned and self.conditional:
            guidance = defaults.get("guidance")
            source["guidance"] = "checkpoint" if "guidance" in defaults else "default"
        eta = defaults.get("eta") if own else None
        return SamplingSettings(sampler, steps, guidance, eta, source)

    # ------------------------------------------------------------------ conditioning
    def resolve_labels(self, classes: list[str | int] | None, n: int) -> Tensor | None:
        """Class names / indices -> label tensor of length n (cycled), or None."""
        if classes is None:
            return None
        if self.num_classes is None:
            raise ValueError(
                "this checkpoint is unconditional: it takes no class; drop --class / classes"
            )
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        dataset = self.config.get("run", {}).get("data", {}).get("name", "")
        aliases = class_aliases(dataset, self.class_names)
        idx = [resolve_class(c, names, aliases) for c in classes]
        return torch.tensor([idx[i % len(idx)] for i in range(n)], device=self.device)

    def _prompts(self, prompt: str | list[str] | None, n: int, what: str) -> list[str] | None:
        """A prompt (or a list, cycled) for each of n samples; None stays None."""
        if prompt is None:
            return None
        if not self.takes_text:
            raise ValueError(f"this checkpoint takes no text: drop {what}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError(f"{what} is an empty list; give at least one prompt")
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
    ) -> Denoiser:
        """The (guided, clipped) denoiser for one batch. With text, the unconditional branch
        of guidance is `negative` (a negative prompt's tokens, as in Stable Diffusion) or no
        text at all."""
        cond = text if text is not None else labels
        den: Denoiser = ModelDenoiser(self.net, self.process, self.parameterization, cond=cond)
        if guidance is not None:
            if text is not None:
                b = text.tokens.shape[0]
                uncond_cond = negative if negative is not None else self._text(None, b)
            elif labels is not None:
                uncond_cond = torch.full_like(labels, self.num_classes)
            else:
                raise ValueError(
                    "guidance needs a conditional checkpoint and a class or a prompt"
                )
            uncond = ModelDenoiser(self.net, self.process, self.parameterization, cond=uncond_cond)
            den = GuidedDenoiser(den, uncond, guidance)
        elif negative is not None:
            raise ValueError("a negative prompt needs guidance (e.g. guidance=3)")
        if clip is not None:
            den = ThresholdedDenoiser(den, clip)
        return den

    def _clip(self, clip: str | None) -> str | None:
        # Scaled latents are not confined to [-1, 1]: clipping them would distort every image.
        if clip == "auto":
            return None if self.autoencoder is not None else "static"
        return clip

    def _to_pixels(self, x: Tensor) -> Tensor:
        """Model-space samples -> uint8 pixels (decoding latents first)."""
        x = x.float()
        if self.autoencoder is not None:
            x = self.autoencoder.from_latent(x)
        return to_uint8(x.cpu())

    def _to_model_space(self, images: Any, what: str = "image") -> Tensor:
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
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        spacing: str | None = None,
        callback: Callable[[dict], None] | None = None,
        precision: str = "fp32",
        init: Tensor | None = None,
        strength: float = 1.0,
        mask: Tensor | None = None,
        first: int = 0,
        nearest_captions: int | None = None,
        progress: bool = False,
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
        conditional model). spacing defaults per sampler (difflab.samplers.DEFAULTS);
        `options` go to the sampler (eta=, variance=, ...; ddim gets the checkpoint's eta
        unless given). clip "auto": static for pixel models, none for latent ones.

        `init` (model-space, from `_to_model_space`) with `strength` < 1 starts from the
        noised init (img2img); `mask` (model-space, 1 = generate) keeps the rest of `init`.
        `nearest_captions`: see :meth:`nearest_captions` (prompts and negative prompts alike).
        `progress`: a tqdm bar on stderr over every batch's steps, with the network
        evaluations so far (:class:`SamplingProgress`); off by default, the library is quiet.
        """
        check_sampling_inputs(n, steps, guidance, batch_size)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise ValueError(f"first (the index of a sample) must be an int >= 0, got {first!r}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        clip = self._clip(clip)
        labels_all = self.resolve_labels(classes, n)
        prompts = self._prompts(prompt, n, "prompt")
        negatives = self._prompts(negative_prompt, n, "negative_prompt")
        nearest = self.nearest_captions(nearest_captions)
        settings = self.sampling_settings(
            sampler, steps, guidance, conditioned=labels_all is not None or prompts is not None
        )
        sampler, steps, guidance = settings.sampler, settings.steps, settings.guidance
        if settings.eta is not None:
            options.setdefault("eta", settings.eta)
        fn = get_sampler(sampler)
        if self.takes_text and prompts is None and guidance is not None:
            raise ValueError("guidance on a text model needs a prompt")
        timesteps = default_timesteps(sampler, self.process, steps, spacing)
        if strength < 1.0:
            if init is None:
                raise ValueError("strength < 1 needs an init image (img2img)")
            timesteps = truncate_timesteps(timesteps, self.process, strength)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else nullcontext()
        )
        # The bar counts the network's forward calls (a guided step makes two) until closed.
        bar = SamplingProgress(self.net, n, batch_size, len(timesteps)) if progress else None
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
                den = self.denoiser(labels, guidance, clip, text=text, negative=negative)
                noise = randn((b, *self.model_shape), gens, self.device)
                x0_init = None
                if init is not None:
                    x0_init = (
                        init[start : start + b] if len(init) == n else init.expand(b, -1, -1, -1)
                    )
                if mask is not None:
                    den = InpaintingDenoiser(den, x0_init, mask)
                t0 = timesteps[0].to(self.device)
                if x0_init is not None and strength < 1.0:
                    x = self.process.q_sample(x0_init, t0.expand(b), noise)  # SDEdit's start
                else:
                    x = noise * self.process.prior_std()
                with autocast:
                    out = fn(den, x, timesteps, generator=gens, callback=step_callback, **options)
                yield self._to_pixels(out), (labels.cpu() if labels is not None else None)
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
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        pixels = as_image_tensor(image, self.image_shape, "image")
        n = _result_count(n, len(pixels), "images")
        init = self._to_model_space(pixels)
        if strength == 0.0:
            return self._to_pixels(init.expand(n, -1, -1, -1) if len(init) == 1 else init)
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

        `image`: any form :func:`as_image_tensor` takes. `mask`: non-zero = generate (bool,
        0/1, 0/255; a path or PIL image; (H, W), (N, H, W), (N, 1, H, W); see
        :func:`as_mask_tensor`), the image's size. One image and one mask give n results;
        a batch of images or of masks (or both, of the same length) one result each.

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
        n = _result_count(n, max(len(pixels), len(pmask)), "images" if len(pixels) > 1 else "masks")
        init = self._to_model_space(pixels)
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
        """Stream n samples into an .npz with `images` uint8 (N, C, H, W) (+ `labels`)."""
        path = Path(path)
        images = np.lib.format.open_memmap(
            path.with_suffix(".images.npy"), mode="w+", dtype=np.uint8, shape=(n, *self.image_shape)
        )
        labels = np.zeros(n, dtype=np.int64)
        has_labels, i = False, 0
        for batch, lab in self.generate_batches(n, **kwargs):
            images[i : i + len(batch)] = batch.numpy()
            if lab is not None:
                labels[i : i + len(batch)], has_labels = lab.numpy(), True
            i += len(batch)
        images.flush()
        arrays = {"images": images}
        if has_labels:
            arrays["labels"] = labels
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        del images
        path.with_suffix(".images.npy").unlink()
        return path


def check_sampling_inputs(n: Any, steps: Any, guidance: Any, batch_size: Any) -> None:
    """Refuse counts and scales that would silently draw garbage or allocate without bound:
    guidance inf or 1e9 turns every sample into saturated noise, NaN passes `x < 0` checks."""

    def whole(value: Any) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if not whole(n) or n < 1:
        raise ValueError(f"number of images must be >= 1, got {n!r}")
    if not whole(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if steps is not None and (not whole(steps) or steps not in Range(1, MAX_STEPS)):
        raise ValueError(f"steps must be a whole number {Range(1, MAX_STEPS)}, got {steps!r}")
    allowed = Range(0, MAX_GUIDANCE)
    if guidance is not None and (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float | np.number)
        or float(guidance) not in allowed
    ):
        raise ValueError(f"guidance must be a finite number {allowed}, got {guidance!r}")


class InpaintingDenoiser:
    """Keep the known region: x0 = mask * x0_model + (1 - mask) * x0_known at every call.

    Every sampler in difflab steps from the x0 (and matching eps) prediction, so pinning x0
    outside the mask pins the known region of the whole trajectory to the forward process
    of the known image, for any sampler (the replacement method of Song et al. 2021, app. G,
    applied to x0). eps is recomputed from x_t and the new x0 so the pair stays consistent.
    """

    def __init__(self, denoiser: Denoiser, known: Tensor, mask: Tensor):
        self.inner, self.known, self.mask = denoiser, known, mask
        self.process = denoiser.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        pred = self.inner(x, t)
        x0 = self.mask * pred.x0 + (1 - self.mask) * self.known.to(pred.x0.dtype)
        return Prediction(x0, self.process.eps_from_x0(x, t, x0))


def _result_count(n: int | None, given: int, what: str) -> int:
    """How many results an edit makes: n (default: one per given image); a batch of more
    than one image (or mask) fixes it, since each result belongs to one of them."""
    if n is None:
        return given
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if given > 1 and n != given:
        raise ValueError(
            f"n={n} but {given} {what} were given: one result per {what[:-1]}; omit n, or "
            f"give one {what[:-1]} to draw it n times"
        )
    return n


def truncate_timesteps(timesteps: Tensor, process, strength: float) -> Tensor:
    """The part of a sampling grid at or below time strength * t_max (img2img's start), as
    diffusers does for its schedulers: fewer steps for a weaker edit."""
    t_start = process.t_min + strength * (process.t_max - process.t_min)
    kept = timesteps[timesteps <= t_start + 1e-9]
    if len(kept) < 2:  # keep at least one step
        kept = timesteps[-2:]
    return kept


# Sizes an array's channel axis may have: 1 grey, 3 RGB, and 2 / 4 (grey or RGB with alpha),
# recognised only to be refused with a message that says so. Anything larger on the first
# (or last) axis of a 3-D array is a batch of grey images or a spatial side.
_CHANNEL_COUNTS = (1, 2, 3, 4)


def _size(h: int, w: int) -> str:
    return f"{h}x{w}"


def _as_array(x: Any) -> np.ndarray:
    """A numpy view of an array-like (tensors leave the GPU and the autograd graph)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16: widen low-precision floats first (exact for fp16 / bf16).
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


# The largest picture read from a file: 16.7 megapixels (64 MB as RGBA) is far beyond any
# model here, and a file that claims more (a "decompression bomb": a few KB of PNG that
# inflate to gigabytes) is refused from its header, before anything is decoded.
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE


def read_image_file(path: str | Path, what: str = "image") -> Any:
    """A PIL image decoded from `path`; any failure is a ValueError that names the file
    and what is wrong (missing, a folder, not an image, corrupt, too large)."""
    import warnings

    from PIL import Image

    name = str(path)
    if not Path(path).exists():
        raise ValueError(f"cannot read {what} {name!r}: it does not exist")
    if Path(path).is_dir():
        raise ValueError(f"cannot read {what} {name!r}: it is a folder; give an image file")
    try:
        with warnings.catch_warnings():
            # PIL only warns below twice its own limit; ours is lower, so make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
            w, h = image.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"it is {w}x{h} pixels; difflab reads images of at most "
                    f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
                )
            image.load()
    except Exception as e:  # PIL's decoders raise many types on corrupt data (SyntaxError, ...)
        why = str(e) or type(e).__name__
        raise ValueError(f"cannot read {what} {name!r}: {why}") from e
    return image


def _layout(x: np.ndarray, shape: tuple[int, int, int], what: str) -> tuple[np.ndarray, str]:
    """(N, C, H, W) from the layouts as_image_tensor accepts (its docstring), and the name of
    the layout it was read as. The model's (C, H, W) = `shape` settles what the shape alone
    cannot: whether (3, 28, 28) is one RGB image or three grey ones."""
    c, h, w = shape
    s = tuple(x.shape)
    if x.ndim == 2:
        return x[None, None], "(H, W)"
    if x.ndim == 3:
        channels_last = s[2] in _CHANNEL_COUNTS and s[0] not in _CHANNEL_COUNTS
        if s[:2] == (h, w) and s[2] in _CHANNEL_COUNTS and s[1:] != (h, w):
            channels_last = True  # the model's size on the first two axes
        if channels_last:  # as PIL and imageio give them
            return x.transpose(2, 0, 1)[None], "(H, W, C)"
        if s[0] == c:  # the model's own channel count first: one image
            return x[None], "(C, H, W)"
        return x[:, None], "(N, H, W)"  # e.g. x_test[:3] of a grey dataset
    if x.ndim == 4:
        channels_last = s[3] in _CHANNEL_COUNTS and s[1] not in _CHANNEL_COUNTS
        if s[1:3] == (h, w) and s[3] in _CHANNEL_COUNTS and s[2:] != (h, w):
            channels_last = True
        if channels_last:
            return x.transpose(0, 3, 1, 2), "(N, H, W, C)"
        if s[1] in _CHANNEL_COUNTS:
            return x, "(N, C, H, W)"
    raise ValueError(
        f"{what} has shape {s}; give (H, W), (C, H, W), (H, W, C), or a batch (N, H, W), "
        "(N, C, H, W), (N, H, W, C), with C = 1 (grey) or 3 (RGB)"
    )


def _to_uint8_pixels(x: np.ndarray, what: str) -> np.ndarray:
    """Pixel values 0..255 as uint8 from the dtypes as_image_tensor accepts (its docstring)."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise ValueError(
            f"{what} has dtype {x.dtype}; give uint8 pixels 0..255 or floats in [0, 1] "
            "(or [-1, 1])"
        )
    if x.size == 0:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{what} of integer type {x.dtype} holds {lo}..{hi}; pixels are 0..255"
            )
        return x.astype(np.uint8)
    v = x.astype(np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    lo, hi = float(v.min()), float(v.max())
    # Half a grey level of slack, so that float error (1.0000001) is not refused.
    slack = 0.5 / 255
    if hi > 1 + slack or lo < -1 - slack:
        hint = (
            "; it looks like 0..255 pixels: cast to uint8 (or divide by 255)"
            if lo >= 0 and hi <= 255
            else ""
        )
        raise ValueError(
            f"{what} holds floats in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
            f"(or [-1, 1]){hint}"
        )
    # The documented rule: [0, 1] unless some value is negative, then [-1, 1] (difflab's
    # model space). Rounded to the nearest of the 256 levels, as writing a file would.
    v = (v + 1.0) * 127.5 if lo < 0 else v * 255.0
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def as_image_tensor(image: Any, shape: tuple[int, int, int], what: str = "image") -> Tensor:
    """Images in any usual form -> uint8 (N, C, H, W) with the model's (C, H, W) = `shape`.

    Accepted, and converted to the same uint8 pixels (so every form of one picture gives
    bit-identical results):

    - a path, or a PIL image: decoded as training images from a folder are
      (difflab.data.transforms.pil_to_array: EXIF orientation, transparency over white,
      16-bit grey scaled to 8 bits), to the model's channels;
    - a numpy array or torch tensor, one image or a batch:
        2-D: (H, W), one grey image.
        3-D: (H, W, C) when the last axis is 1-4 long (channels last, as PIL and imageio
          give them); otherwise (K, H, W) is one image (C, H, W) when K is the model's
          channel count (1 for a grey model, 3 for RGB) and a batch of K grey images
          (N, H, W) when it is not. So for a grey model (3, 28, 28) is three images; give
          one RGB picture as (28, 28, 3) or (1, 3, 28, 28).
        4-D: (N, H, W, C) when the last axis is 1-4 long, else (N, C, H, W).
        (When both ends could be channels, as in (3, 28, 3), the axes of the model's size
        decide, then channels first.) C = 1 (grey) or 3 (RGB); 2 or 4 (alpha) is refused.
      Values: integer dtypes are pixels 0..255; floats are in [0, 1], unless some value is
      negative, and then in [-1, 1] (difflab's model space); they are rounded to the nearest
      of the 256 grey levels. bool images, floats outside [-1, 1] (e.g. 0..255) are refused.
    - a list or tuple of any of these: concatenated into one batch.

    Grey and RGB are converted to the model's channels (grey -> RGB repeats; RGB -> grey is
    PIL's integer ITU-R 601 luma, the same as for a PIL image). The size must be the
    model's: an error names both (nothing is resized silently).
    """
    from PIL import Image

    from difflab.data.transforms import convert_channels, pil_to_array

    c, h, w = shape
    if isinstance(image, list | tuple) and image and not isinstance(image[0], int | float):
        parts = [as_image_tensor(part, shape, what) for part in image]
        return torch.cat(parts)
    if isinstance(image, str | Path):
        image = read_image_file(image, what)
    layout = "PIL"
    if isinstance(image, Image.Image):
        x = pil_to_array(image, c, None)[None]  # (1, C, H, W) uint8, already the model's C
    else:
        x, layout = _layout(_as_array(image), shape, what)
        x = _to_uint8_pixels(x, what)
    n, xc, xh, xw = x.shape
    if n == 0:
        raise ValueError(f"{what} is an empty batch")
    if xc in (2, 4):
        kind = "grey + alpha" if xc == 2 else "RGBA"
        raise ValueError(
            f"{what} has {xc} channels ({kind}?), read as {layout}; give grey or RGB: drop "
            f"the alpha channel (e.g. PIL's .convert('{'L' if xc == 2 else 'RGB'}'))"
        )
    if (xh, xw) != (h, w):
        what = f"{what} is" if n == 1 else f"{what} batch ({n} images) is"
        raise ValueError(
            f"{what} {_size(xh, xw)} but the model draws {_size(h, w)}; resize it to "
            f"{_size(h, w)} first"
        )
    x = convert_channels(np.ascontiguousarray(x), c)
    return torch.from_numpy(np.ascontiguousarray(x))


def as_mask_tensor(mask: Any, shape: tuple[int, int, int], what: str = "mask") -> Tensor:
    """A bool mask (N, 1, H, W), True = generate, for images of (C, H, W) = `shape`.

    Non-zero means generate, whatever the type: bool, 0/1 and 0/255 masks all work (a soft
    mask regenerates every pixel it touches). Accepted: a path or PIL image (converted to
    grey), or an array / tensor (H, W), (1, H, W), (H, W, 1), a batch (N, H, W) or
    (N, 1, H, W) / (N, H, W, 1), or a list of these. Its size must be the image's.
    """
    from PIL import Image

    _, h, w = shape
    if isinstance(mask, list | tuple) and mask and not isinstance(mask[0], int | float | bool):
        return torch.cat([as_mask_tensor(part, shape, what) for part in mask])
    if isinstance(mask, str | Path):
        mask = read_image_file(mask, what)
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    m = _as_array(mask)
    s = tuple(m.shape)
    if m.dtype.kind not in "biuf":
        raise ValueError(f"{what} has dtype {m.dtype}; give bool, 0/1 or 0/255 values")
    if m.dtype.kind == "f" and not np.isfinite(m).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    if m.ndim == 3 and s[2] in (2, 3, 4) and s[:2] == (h, w):
        raise ValueError(
            f"{what} has shape {s}: {s[2]} channels; give one channel, (H, W) (e.g. "
            "mask.any(axis=-1), or a grey image)"
        )
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m.transpose(2, 0, 1)[None] if s[2] == 1 and s[0] != 1 else m[:, None]
    elif m.ndim == 4 and s[1] != 1 and s[3] == 1:
        m = m.transpose(0, 3, 1, 2)
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(
            f"{what} has shape {s}; give (H, W), (1, H, W) or a batch (N, H, W), (N, 1, H, W)"
        )
    if m.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch")
    mh, mw = m.shape[-2:]
    if (mh, mw) != (h, w):
        raise ValueError(
            f"{what} is {_size(mh, mw)}, image {_size(h, w)}; they must be the same size"
        )
    return torch.from_numpy(np.ascontiguousarray(m != 0))
