"""`difflab sample CHECKPOINT`: draw images, as a PNG grid (with a GIF of the reverse process)
or an .npz that streams to disk in batches.

    difflab sample runs/fashion/last -n 64 --out samples.png   # the run's [sample] settings
    difflab sample mnist-digits-cond --class all --guidance 3   # a grid row per class

Several classes or prompts are laid out as one grid row each, and the grid's title says what
it takes to draw the picture again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from difflab import viz
from difflab.checkpoints.store import trained_steps
from difflab.cli.errors import CLIError, removed_on_failure, writing
from difflab.cli.inputs import CHECKPOINT_HELP, check_output_file, resolve_checkpoint
from difflab.cli.sampling import (
    add_compile_argument,
    add_sampling_arguments,
    check_grid,
    compiling,
    grid_scale,
    load_generator,
    sampling_kwargs,
)
from difflab.data import names_every_class
from difflab.data.captions import quote_prompt
from difflab.pipeline import Generator
from difflab.pipeline.generator import npz_scratch_files
from difflab.pipeline.settings import grid_rows
from difflab.training import health


def add_sample_arguments(s: argparse.ArgumentParser) -> None:
    """The flags of `difflab sample`; sets func=cmd_sample."""
    s.add_argument("checkpoint", help=CHECKPOINT_HELP)
    add_sampling_arguments(s, default_n=64)
    s.add_argument("--out", default="samples.png",
                   help="FILE.png (grid) or FILE.npz (default samples.png)")
    s.add_argument("--gif", help="also write the reverse process as a GIF")
    add_compile_argument(s)
    s.add_argument(
        "--class",
        dest="classes",
        action="append",
        help="class name or index (repeatable: a grid row per class), or 'all' for one row "
        "per class of the model (-n is rounded up to whole rows)",
    )
    s.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """Check every output path, load the checkpoint, draw, write the grid / GIF / .npz."""
    out = check_output_file(args.out, "--out")
    if out.suffix not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png or .npz, got {out.name!r}")
    if args.gif and check_output_file(args.gif, "--gif").suffix != ".gif":
        # a GIF under another name would be taken for what its name says (or, named as --out,
        # replace the grid just written)
        raise CLIError(f"--gif must end in .gif, got {Path(args.gif).name!r}")
    if args.bare and out.suffix == ".npz":
        raise CLIError("--bare leaves the grid's frame and title off a picture; an .npz --out "
                       "holds the samples alone already")
    for flag, given in (("--nrow", args.nrow), ("--scale", args.scale)):
        if given is not None and out.suffix == ".npz":
            raise CLIError(f"{flag} lays out the PNG grid, and an .npz --out writes no grid: "
                           f"give a .png --out with {flag}, or drop {flag}")
    if args.gif and out.suffix == ".npz":
        raise CLIError("--gif shows the grid's reverse process, and an .npz --out writes no "
                       "grid: give a .png --out with --gif, or drop --gif")
    for scratch in npz_scratch_files(out) if out.suffix == ".npz" else []:
        if os.path.lexists(scratch):
            raise CLIError(f"--out {out}: {scratch} exists, and the samples stream through a "
                           "file of that name; move it away or choose another --out")
    gen = load_generator(args)
    classes, row_labels = sample_rows(args, gen)
    if out.suffix == ".png":
        check_grid(args, gen.image_shape, frames=60 if args.gif else 1)
    kw = sampling_kwargs(args, gen, classes)
    kw["compile"] = compiling(args, gen, kw["steps"])  # img2img and inpaint draw a few images
    if args.gif and out.suffix == ".png" and args.n > args.batch_size:
        # Every frame is one grid of the whole run; batches after the first would not fit it.
        raise CLIError(
            f"--gif draws all {args.n} samples in one batch: raise --batch-size to "
            f"{args.n} or draw fewer"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        with removed_on_failure(*npz_scratch_files(out)), writing(out):
            gen.generate_to_npz(out, args.n, **kw)
    else:
        recorder = None
        if args.gif:  # latent trajectories are not pictures: show the decoded x0 then
            key = "x" if gen.autoencoder is None else "denoised"
            recorder = viz.FrameRecorder(key=key, decode=gen.to_pixels)
        images = gen.generate(args.n, callback=recorder, **kw)
        say_health(args, gen, images, conditioned=classes is not None or bool(args.prompt))
        nrow = args.nrow or args.per_row or 8
        labels = row_labels if nrow == args.per_row else None  # rows of one condition only
        title = grid_title(args, kw, gen)
        with writing(out):
            if args.bare:  # the images alone: -n 1 --scale 1 is the sample itself
                viz.save_grid(images, out, nrow=nrow, scale=grid_scale(args), padding=0)
            else:
                viz.save_grid(images, out, nrow=nrow, scale=grid_scale(args), row_labels=labels,
                              title=title)
        if recorder is not None:
            with writing(Path(args.gif)):
                viz.save_gif(
                    recorder.finish() + [images],
                    args.gif,
                    nrow=nrow,
                    scale=grid_scale(args),
                    max_frames=60,
                    hold_last_ms=2000,
                    frame_labels=recorder.labels + ["final sample"],
                    row_labels=labels,
                    title=title,
                )
            print(f"difflab: wrote {args.gif}")
    print(f"difflab: wrote {args.n} sample{'s' if args.n != 1 else ''} to {out}")
    return 0


# Fewer samples say little of a model (a kind of bad image is reported when a quarter of the
# samples show it): a single dark garment is not a failing run.
HEALTH_MIN_SAMPLES = 4


def say_health(args: argparse.Namespace, gen: Generator, images: torch.Tensor,
               conditioned: bool) -> None:
    """Warn, as the run's own health checks would have, when the samples just drawn are
    noise, black, flat, saturated or near-copies: judged against the training data's
    statistics that the checkpoint recorded (difflab.training.health). Checkpoints without
    them (the shipped ones, runs from before 2026-12-07) are not judged. Samples of one class
    or prompt are alike by request, so they are not judged for near-copies."""
    stats = health.stats_from_dict(gen.config.get("data_stats"))
    if stats is None or len(images) < HEALTH_MIN_SAMPLES:
        return
    step = trained_steps(resolve_checkpoint(args.checkpoint))
    for finding in health.check_samples(images, stats, step):
        if not (conditioned and finding.kind == "collapse"):
            print(f"difflab: warning: {finding.message}", file=sys.stderr)




def sample_rows(args: argparse.Namespace, gen) -> tuple[list | None, list[str] | None]:
    """Lay out several classes (`--class all` or a list) or several prompts as one grid row
    each: every value is drawn ceil(n / values) times in a row, and when that changes n a
    line says so. Sets args.n, args.per_row (None: no rows) and, for prompts, args.prompt
    (and args.negative_prompt when there is one per prompt). Returns (classes for the
    Generator or None, one label per row or None)."""
    args.per_row = None
    if args.classes is not None:
        alls = [c for c in args.classes if names_every_class(c)]
        if alls and len(args.classes) > 1:
            raise CLIError("--class all draws every class: give it alone, or name the classes")
        if alls:
            args.classes = ["all"]  # ALL, All: names are case-insensitive, and so is this
    if args.classes == ["all"]:
        if gen.num_classes is None:
            raise CLIError("--class all needs a class-conditional checkpoint")
        values, what = list(range(gen.num_classes)), ("--class all", "class", "classes")
    elif args.classes is not None:
        values, what = list(args.classes), ("--class", "class", "classes")
    elif args.prompt is not None:
        values, what = list(args.prompt), ("--prompt", "prompt", "prompts")
    else:
        return None, None
    if len(values) == 1:  # one class or prompt: the title names it, no rows to tell apart
        return (values if args.classes is not None else None), None
    rows, per = grid_rows(values, args.n)
    flag, one, many = what
    if per * len(values) != args.n:
        print(
            f"difflab: {flag}: {per} per {one} x {len(values)} {many} = {per * len(values)} "
            f"samples (asked for {args.n})"
        )
    args.n, args.per_row = len(rows), per
    if args.classes is None:  # prompts
        if args.negative_prompt and len(args.negative_prompt) == len(values):
            args.negative_prompt = [v for v in args.negative_prompt for _ in range(per)]
        args.prompt = rows
        return None, values  # viz cuts a long label to its width
    return rows, gen.class_labels(values)  # fails on an unknown class


def grid_title(args: argparse.Namespace, kw: dict, gen) -> str:
    """The title of a `difflab sample` grid: the model, the class or prompt when all samples
    share one, sampler, steps, guidance and seed: what it takes to draw the picture again."""
    asked = None
    if args.per_row is None and args.classes:
        index = int(gen.resolve_labels(args.classes[:1], 1)[0])
        asked = "class " + (gen.class_names or [str(i) for i in range(gen.num_classes)])[index]
    elif args.per_row is None and args.prompt:
        asked = quote_prompt(args.prompt[0])
    negatives = set(args.negative_prompt or [])
    return viz.sampling_title(
        args.checkpoint, kw["sampler"], kw["steps"], kw["seed"], kw["guidance"], asked=asked,
        autoguidance=kw.get("autoguidance"), interval=kw.get("guidance_interval"),
        sigma_max=kw.get("sigma_max"), rho=kw.get("rho"),
        relation_guidance=kw.get("relation_guidance"),
        binding_guidance=kw.get("binding_guidance"),
        relation_regions=bool(kw.get("relation_regions")),
        negative=quote_prompt(negatives.pop()) if len(negatives) == 1 else None,
    )
