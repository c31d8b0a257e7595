"""What a sampling run is asked for: its settings and where each came from, the defaults a
Generator falls back to, and the checks that refuse bad counts, steps and guidance early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from difflab.argtypes import MAX_GUIDANCE, MAX_STEPS, Range
from difflab.diffusion.schedules import describe_karras_grid

# The sampler of a Generator without a run config (one over a live trainer's weights):
# DPM-Solver++(2M) at its default 20 steps matches DDIM at 50 on FID (BENCHMARKS.md, "FID
# against network evaluations").
FALLBACK_SAMPLER = "dpmpp_2m"
ADAPTIVE_SAMPLER = "ode"  # samplers.ode: an adaptive solver, whose step count is its own

# img2img's default strength: the smallest strength whose class-change rate reaches 80 % of the
# largest measured, chosen on one half of the images of a sweep and checked on the other
# (bench/img2img_strength.py, BENCHMARKS.md "img2img: the default strength"). On fashion-text,
# 0.9 redraws 81 % / 91 % (select / check half) of images as the prompt's class; 0.6 only 17 %,
# and 0.8 (66 % / 75 %, SSIM to the input 0.24 against 0.11) missed the bar by one image.
DEFAULT_IMG2IMG_STRENGTH = 0.9


# The sampling settings that guide with a text model's own attention maps, as SampleConfig,
# SamplingSettings and the command line name them.
ATTENTION_GUIDANCE = ("relation_guidance", "binding_guidance")


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
    # the noise levels (low, high] guidance or autoguidance applies at (GuidedDenoiser);
    # None: every step
    guidance_interval: tuple[float, float] | None = None
    # autoguidance's weight w (Generator.denoiser), in place of guidance; None: off
    autoguidance: float | None = None
    # the Karras grid's top noise level and rho (difflab.samplers.default_timesteps); None:
    # the sampler's own (80 or the process's top, and 7)
    sigma_max: float | None = None
    rho: float | None = None
    # relation and binding guidance's scales (difflab.pipeline.relation_guidance,
    # binding_guidance); None: off
    relation_guidance: float | None = None
    binding_guidance: float | None = None
    # whether a prompt that is one relation is drawn by regions first
    # (difflab.pipeline.relation_regions)
    relation_regions: bool = False

    def summary(self, eta: float | None = None) -> str:
        """"dpmpp_2m, 20 steps, guidance 3": what runs (guidance only where it applies)."""
        what = [self.sampler, f"{self.steps} step{'s' if self.steps != 1 else ''}"]
        what[-1] += describe_karras_grid(self.sigma_max, self.rho)
        if self.sampler == ADAPTIVE_SAMPLER:  # only the grid's two ends reach its solver
            what[-1] = "adaptive steps (its solver takes as many as its tolerance needs"
            what[-1] += "; the steps given are not used)" if self.source.get("steps") == \
                "given" else ")"
        if "guidance" in self.source:  # a conditional model asked for a class or prompt
            what.append("no guidance" if self.guidance is None else f"guidance {self.guidance:g}")
        if self.autoguidance is not None:
            what.append(f"autoguidance {self.autoguidance:g}")
        if is_guided(self.guidance, self.autoguidance) and self.guidance_interval is not None:
            low, high = self.guidance_interval
            what[-1] += f" at noise levels {low:g} to {high:g}"
        for key in ATTENTION_GUIDANCE:
            if getattr(self, key):
                what.append(f"{key.replace('_', ' ')} {getattr(self, key):g}")
        if self.relation_regions:
            what.append("relation regions")
        if eta is not None:
            what.append(f"eta {eta:g}")
        return ", ".join(what)


def is_guided(guidance: float | None, autoguidance: float | None) -> bool:
    """Whether a draw calls a second network: classifier-free guidance or autoguidance at a
    weight other than 1 (guidance 1 is the conditional model alone, autoguidance 1 the model
    alone)."""
    return any(w is not None and w != 1.0 for w in (guidance, autoguidance))


def check_sampling_inputs(n: Any, steps: Any, guidance: Any, batch_size: Any,
                          guidance_name: str = "guidance") -> None:
    """Refuse counts and scales that would silently draw garbage or allocate without bound:
    guidance inf or 1e9 turns every sample into saturated noise, NaN passes `x < 0` checks.
    `guidance_name`: what the scale is called in the message (autoguidance is checked here
    too)."""

    def whole(value: Any) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if not whole(n):
        raise ValueError(f"the number of images must be a whole number (an int), got "
                         f"{type(n).__name__} {n!r}")
    if n < 1:
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
        raise ValueError(f"{guidance_name} must be a finite number {allowed}, got {guidance!r}")


def check_strength(strength: Any) -> None:
    """img2img's strength: a number in [0, 1] (0 keeps the image, 1 ignores it)."""
    if (isinstance(strength, bool) or not isinstance(strength, int | float | np.number)
            or not 0.0 <= float(strength) <= 1.0):
        raise ValueError(f"strength must be a number in [0, 1] (0 keeps the image, 1 ignores "
                         f"it), got {strength!r}")


def result_count(n: int | None, given: int, what: str) -> int:
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


def grid_rows(values: list[Any], n: int) -> tuple[list[Any], int]:
    """Several classes or prompts drawn as one grid row each: every value ceil(n / values)
    times (never fewer images than asked for). Returns (a value per image, images per row)."""
    per = -(-n // len(values))
    return [v for v in values for _ in range(per)], per
