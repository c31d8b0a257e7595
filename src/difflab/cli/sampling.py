"""What the drawing commands share (sample, img2img, inpaint): their flags, the checkpoint
they load, and the sampling settings they resolve and announce.

Sampler, steps and guidance are the flags over the checkpoint's [sample] settings, resolved
once here, and one line says what runs and where each setting came from, so that a
checkpoint's defaults never act silently.
"""

from __future__ import annotations

import argparse
import inspect

import torch

from difflab.argtypes import (
    MAX_ATTENTION_GUIDANCE,
    MAX_BATCH,
    MAX_GRID,
    MAX_GUIDANCE,
    MAX_NOISE_LEVEL,
    MAX_SAMPLES,
    MAX_SCALE,
    MAX_SEED,
    MAX_STEPS,
    device_name,
    float_in,
    int_in,
    prompt_text,
    sampler_name,
)
from difflab.cli.errors import CLIError, reading_checkpoint
from difflab.cli.inputs import resolve_checkpoint
from difflab.pipeline import Generator, SamplingSettings
from difflab.pipeline.binding_guidance import describe_binding, find_phrases
from difflab.pipeline.compiled import COMPILE_CHOICES, choose_compile
from difflab.pipeline.relation_guidance import describe_relation, find_relation
from difflab.pipeline.relation_regions import REGIONS_SIGMA, describe_regions
from difflab.pipeline.settings import ATTENTION_GUIDANCE
from difflab.samplers import SAMPLERS

# The largest picture a command writes: 2**27 pixels (128 MP, 384 MB as RGB), a GIF's frames
# together: 2**30. A 100x100 grid of 28x28 images at --scale 2 is 31 MP.
MAX_GRID_PIXELS = 2**27
MAX_GIF_PIXELS = 2**30
GRID_SCALE = 2  # --scale's default: each pixel of a PNG grid drawn as 2x2


def grid_scale(args: argparse.Namespace) -> int:
    """--scale, or its default when it was left out."""
    return args.scale or GRID_SCALE


def add_sampling_arguments(s: argparse.ArgumentParser, default_n: int) -> None:
    """Options every drawing command shares (sample, img2img, inpaint)."""
    s.add_argument("--bare", action="store_true",
                   help="the images alone in the PNG: no title, row labels or padding (with "
                   "-n 1 --scale 1 it is the image at its own size, as img2img takes it)")
    s.add_argument(
        "--sampler",
        type=sampler_name,
        help="default: the checkpoint's [sample] sampler (`difflab info NAME` shows it)",
    )
    s.add_argument(
        "--steps",
        type=int_in(1, MAX_STEPS),
        help="steps of the time grid (default: the checkpoint's [sample] steps; with another "
        "--sampler, that sampler's own default: ddim 50, dpmpp_2m 20, ...)",
    )
    s.add_argument("-n", "--num", dest="n", type=int_in(1, MAX_SAMPLES), default=default_n,
                   help=f"how many images (default {default_n})")
    s.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    s.add_argument(
        "--prompt",
        action="append",
        type=prompt_text,
        help="text prompt (text models; repeatable: `sample` draws a grid row per prompt, "
        "img2img and inpaint cycle them)",
    )
    s.add_argument(
        "--negative-prompt",
        action="append",
        type=prompt_text,
        help="what to steer away from (replaces the unconditional branch of guidance: "
        "--guidance, or the checkpoint's)",
    )
    s.add_argument(
        "--guidance",
        type=float_in(0, MAX_GUIDANCE),
        help="classifier-free guidance scale, with --class or --prompt (default: the "
        f"checkpoint's [sample] guidance; 1: the plain conditional model; 0 to {MAX_GUIDANCE:g})",
    )
    add_guidance_interval_argument(s)
    add_autoguidance_argument(s)
    add_attention_guidance_arguments(s)
    add_grid_arguments(s)
    s.add_argument(
        "--nearest-captions",
        type=int_in(0, 100_000),
        metavar="K",
        help="read each prompt as a blend of its K nearest training captions (text models "
        "with a caption bank; default: the run's text.nearest_captions; 0: off)",
    )
    s.add_argument(
        "--eta",
        type=float_in(0, 1),
        help="DDIM eta (0 deterministic, 1 like DDPM); ddim's default is the checkpoint's "
        "[sample] eta when that is its sampler",
    )
    s.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=256)
    s.add_argument("--nrow", type=int_in(1, MAX_GRID))
    s.add_argument("--scale", type=int_in(1, MAX_SCALE),
                   help=f"upscale the PNG grid (default {GRID_SCALE})")
    s.add_argument(
        "--no-clip", action="store_true", help="do not clip x0 to [-1, 1] (pixel models)"
    )
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    s.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1, mps (default: the "
                   "first of those this machine has)")
    s.add_argument(
        "--quiet", action="store_true", help="no progress bar on stderr (results still print)"
    )


def add_guidance_interval_argument(parser: argparse.ArgumentParser) -> None:
    """--guidance-interval LOW HIGH, for every command that samples with guidance or
    autoguidance."""
    parser.add_argument(
        "--guidance-interval",
        nargs=2,
        type=float_in(0, MAX_NOISE_LEVEL),
        metavar=("LOW", "HIGH"),
        help="guide (classifier-free or autoguidance) only at noise levels sigma/alpha in "
        "(LOW, HIGH], the model alone elsewhere (Kynkaanniemi et al. 2024; e.g. 0.3 3; "
        "default: the checkpoint's [sample] guidance_interval, else every step; 0 1e9: "
        "every step)",
    )


def add_autoguidance_argument(parser: argparse.ArgumentParser) -> None:
    """--autoguidance W, for every command that samples."""
    parser.add_argument(
        "--autoguidance",
        type=float_in(0, MAX_GUIDANCE),
        metavar="W",
        help="guide with an earlier version of the model that the run kept (train.guide_at; "
        "Karras et al. 2024): works without a class or prompt (default: the checkpoint's "
        "[sample] autoguidance; 1: the model alone)",
    )


def add_attention_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """--relation-guidance S and --binding-guidance S, for every command that samples from
    prompts."""
    parser.add_argument(
        "--relation-guidance",
        type=float_in(0, MAX_ATTENTION_GUIDANCE),
        metavar="S",
        help="steer the two objects of a prompt such as 'a circle to the left of a square' "
        "(left of, right of, above, below, ...) with the model's own cross-attention maps "
        "(self-guidance, Epstein et al. 2023; text models with word-piece states; default: "
        "the checkpoint's [sample] relation_guidance, else off; 0: off)",
    )
    parser.add_argument(
        "--binding-guidance",
        type=float_in(0, MAX_ATTENTION_GUIDANCE),
        metavar="S",
        help="draw each word that describes an object ('red', 'small') on its own object and "
        "not on the others of a prompt of two objects or more, with the model's own "
        "cross-attention maps (default: the checkpoint's [sample] binding_guidance, else off; "
        "0: off)",
    )
    parser.add_argument(
        "--relation-regions",
        action=argparse.BooleanOptionalAction,
        help="draw each phrase of a prompt that is one relation ('a red circle to the left of "
        "a blue square') in its own region of the picture while the layout is decided, then "
        "the whole prompt (text models; default: the checkpoint's [sample] relation_regions)",
    )


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """--sigma-max and --rho: the Karras time grid (Karras et al. 2022, eq. 5)."""
    parser.add_argument(
        "--sigma-max",
        type=float_in(0, MAX_NOISE_LEVEL, low_open=True),
        metavar="SIGMA",
        help="top noise level (sigma/alpha) of the Karras time grid, for samplers that step on "
        "one (dpmpp_2m, dpmpp_2m_sde, heun, ...; default: the checkpoint's [sample] "
        "sigma_max with its own sampler, else 80)",
    )
    parser.add_argument(
        "--rho",
        type=float_in(0, 100, low_open=True),
        help="spacing of the Karras time grid: larger puts more steps at low noise (default: "
        "the checkpoint's [sample] rho with its own sampler, else 7)",
    )


def guidance_interval(args: argparse.Namespace) -> tuple[float, float] | None:
    """--guidance-interval as (low, high), or None when not given; low < high."""
    if args.guidance_interval is None:
        return None
    low, high = args.guidance_interval
    if not low < high:
        raise CLIError(
            f"--guidance-interval {low:g} {high:g}: the low noise level must be below the "
            "high one (e.g. --guidance-interval 0.3 3)"
        )
    return low, high


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """--compile auto|on|off: sample through torch.compile (difflab.pipeline.compiled)."""
    parser.add_argument(
        "--compile", choices=COMPILE_CHOICES,
        help="sample through torch.compile: auto (default) when the job is long enough to pay "
        "for a ~2-minute build (thousands of images, fp32 on a CPU with a C++ compiler); on; off",
    )


def load_generator(args: argparse.Namespace) -> Generator:
    """The checkpoint of a drawing command, ready to sample on --device."""
    path = resolve_checkpoint(args.checkpoint)
    with reading_checkpoint(path):
        return Generator.from_checkpoint(path, device=args.device)


def sampling_kwargs(args: argparse.Namespace, gen, classes: list | None = None,
                    strength: float | None = None) -> dict:
    """The Generator keywords that sample, img2img and inpaint share. Sampler, steps and
    guidance are the flags over the checkpoint's [sample] settings, resolved here once so that
    the line saying what runs is what runs (`strength`: img2img's, where the edit starts)."""
    for flag, given in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt)):
        if given and not gen.takes_text:
            raise CLIError(f"{args.checkpoint} takes no text: drop {flag}")
    if classes is not None and not gen.num_classes:  # before any line says what would run
        kind = ("text-conditional: it takes a --prompt, not a --class" if gen.takes_text
                else "unconditional: it takes no --class")
        raise CLIError(f"{args.checkpoint} is {kind}; drop --class")
    for key in ATTENTION_GUIDANCE:  # refused before a line says what would run
        if getattr(args, key) and not gen.takes_attention_guidance:
            raise CLIError(
                f"{args.checkpoint} cannot take {_flag(key)}: it reads a text model's "
                "attention to the words of its prompt (models reading word pieces, such as "
                "shapes-text); drop the flag"
            )
        if getattr(args, key) and not args.prompt:
            raise CLIError(f"{_flag(key)} steers what a --prompt says: give one, e.g. "
                           "--prompt 'a red circle to the left of a blue square'")
    if args.no_clip and gen.autoencoder is not None:  # before any line says what runs
        raise CLIError(f"--no-clip: {args.checkpoint} is a latent model, whose samples are never "
                       "clipped (its latents are not confined to [-1, 1]); drop --no-clip")
    if args.nearest_captions and gen.caption_bank is None:  # before any line says what runs
        raise CLIError(f"--nearest-captions reads prompts through a caption bank (a text model "
                       f"trained with text.tokens = 'pooled'); {args.checkpoint} has none: drop "
                       "the flag")
    if args.nearest_captions:  # beyond the bank: refused before any line says what runs
        gen.nearest_captions(args.nearest_captions)
    if classes is not None:  # an unknown class, too (several were checked laying out rows)
        gen.class_labels(classes[:1])
    if args.relation_regions and not gen.takes_text:
        raise CLIError(f"{args.checkpoint} cannot take --relation-regions: it draws the "
                       "phrases of a prompt, and this model takes no text; drop the flag")
    if args.relation_regions and not args.prompt:
        raise CLIError("--relation-regions draws the phrases of a --prompt: give one, e.g. "
                       "--prompt 'a red circle to the left of a blue square'")
    settings = gen.sampling_settings(
        args.sampler, args.steps, args.guidance,
        conditioned=classes is not None or bool(args.prompt),
        guidance_interval=guidance_interval(args),
        autoguidance=args.autoguidance,
        sigma_max=args.sigma_max,
        rho=args.rho,
        relation_guidance=args.relation_guidance,
        binding_guidance=args.binding_guidance,
        relation_regions=args.relation_regions,
    )
    kw = dict(
        sampler=settings.sampler,
        steps=settings.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        guidance=settings.guidance,
        guidance_interval=settings.guidance_interval,
        autoguidance=settings.autoguidance,
        sigma_max=settings.sigma_max,
        rho=settings.rho,
        classes=classes,
        clip=None if args.no_clip else "auto",
        precision=args.precision,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        nearest_captions=args.nearest_captions,
        progress=not args.quiet,  # the library is quiet by default; the command is not
    )
    for key in ATTENTION_GUIDANCE:
        kw[key] = getattr(settings, key) or 0.0
    kw["relation_regions"] = settings.relation_regions
    if args.eta is not None and settings.sampler not in (with_eta := _samplers_with_eta()):
        # Without --sampler the checkpoint picks the sampler, which may have no eta at all.
        raise CLIError(
            f"--eta is a setting of {', '.join(with_eta)}; this run samples with "
            f"{settings.sampler}: add --sampler ddim"
        )
    eta = args.eta if args.eta is not None else settings.eta
    if eta is not None:
        kw["eta"] = eta
    if strength == 0.0:  # Generator.img2img returns the image, through the autoencoder
        print("difflab: strength 0 keeps the image (a latent model's through its autoencoder): "
              "nothing is sampled, so no sampler, steps, guidance or prompt applies")
        return kw
    print(describe_sampling(settings, eta))
    if settings.relation_guidance:
        # What was read in each prompt; a prompt with no relation is worth a line only when
        # the flag asked for guidance (the checkpoint's default quietly passes it by).
        for prompt in dict.fromkeys(args.prompt or []):
            if args.relation_guidance or find_relation(prompt) is not None:
                said = describe_relation(prompt, gen.text_encoder)
                print(f"difflab: relation guidance {settings.relation_guidance:g}: {said}")
    if settings.binding_guidance:
        for prompt in dict.fromkeys(args.prompt or []):
            if args.binding_guidance or find_phrases(prompt):
                said = describe_binding(prompt, gen.text_encoder)
                print(f"difflab: binding guidance {settings.binding_guidance:g}: {said}")
    start = edit_start_sigma(gen, strength)
    if settings.relation_regions and start is not None and start <= REGIONS_SIGMA:
        print(f"difflab: relation regions: none at strength {strength:g}: the edit starts at "
              f"noise level {start:.2f}, below the {REGIONS_SIGMA:g} where regions stop")
    elif settings.relation_regions:
        # a relation the regions leave whole is said too: its picture is drawn otherwise
        for prompt in dict.fromkeys(args.prompt or []):
            if args.relation_regions or find_relation(prompt) is not None:
                print(f"difflab: relation regions: {describe_regions(prompt)}")
    print_prompt_readings(args, gen)
    return kw


def edit_start_sigma(gen: Generator, strength: float | None) -> float | None:
    """The noise level (sigma_t / alpha_t) an img2img edit at `strength` starts from; None for
    a drawing from pure noise."""
    if strength is None or strength >= 1.0:
        return None
    t = torch.tensor([gen.process.img2img_time(strength)])
    return float(gen.process.sigma_ve(t)[0])


def compiling(args: argparse.Namespace, gen: Generator, steps: int) -> bool:
    """Whether `difflab sample` draws through torch.compile; said when it does or was asked."""
    choice = choose_compile(args.compile or "auto", gen.device, args.precision, args.n, steps)
    if choice.compile or args.compile is not None:
        print(f"difflab: sampling with the {choice.why}")
    return choice.compile


def _samplers_with_eta() -> list[str]:
    return sorted(n for n, f in SAMPLERS.items() if "eta" in inspect.signature(f).parameters)


def describe_sampling(settings: SamplingSettings, eta: float | None = None) -> str:
    """One line: what a drawing command runs (sampler, steps, guidance) and where each
    setting came from, so that a checkpoint's defaults never act silently."""
    keys = list(settings.source)  # sampler, steps[, guidance]
    if all(settings.source[k] == "checkpoint" for k in keys):
        flags = "/".join(_flag(k) for k in keys)
        why = f"the checkpoint's [sample] settings; {flags} override"
    elif all(settings.source[k] == "given" for k in keys):
        why = "as given"
    else:
        groups: dict[str, list[str]] = {}  # where from -> settings, in order
        for k in keys:
            where = {
                "given": "--no-relation-regions" if k == "relation_regions"
                and not settings.relation_regions else _flag(k),
                "checkpoint": "the checkpoint's [sample] settings",
                "default": f"{settings.sampler}'s default" if k == "steps" else "difflab's default",
            }[settings.source[k]]
            groups.setdefault(where, []).append(k.replace("_", " "))
        why = "; ".join(f"{_listing(ks)}: {where}" for where, ks in groups.items())
    return f"difflab: sampling with {settings.summary(eta)} ({why})"


def _listing(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _flag(setting: str) -> str:
    """The command-line flag of a sampling setting: guidance_interval -> --guidance-interval."""
    return "--" + setting.replace("_", "-")


def print_prompt_readings(args: argparse.Namespace, gen) -> None:
    """Say which training captions each prompt is read as (models with a caption bank), so
    that a surprising picture can be explained."""
    if not args.prompt or gen.nearest_captions(args.nearest_captions) == 0:
        return
    for line in gen.prompt_readings(args.prompt + (args.negative_prompt or [])):
        print(f"difflab: {line}")


def check_grid(args: argparse.Namespace, shape: tuple[int, ...], frames: int = 1) -> None:
    """Refuse a PNG grid (or GIF of `frames` grids) too large to hold in memory, before
    drawing anything: -n and --scale multiply."""
    if args.n > MAX_GRID:
        raise CLIError(f"-n {args.n}: a PNG grid holds at most {MAX_GRID} images; write an "
                       ".npz (--out FILE.npz) for more")
    pixels = args.n * shape[-2] * shape[-1] * grid_scale(args)**2
    limit, what = (MAX_GRID_PIXELS, "the grid") if frames == 1 else (MAX_GIF_PIXELS, "the GIF")
    if pixels * frames > limit:
        raise CLIError(
            f"-n {args.n} at --scale {grid_scale(args)}: {what} would be "
            f"{pixels * frames / 1e6:.0f} megapixels, more than {limit / 1e6:.0f}; lower -n "
            "or --scale"
        )

