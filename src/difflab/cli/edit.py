"""`difflab img2img` and `difflab inpaint`: draw from a picture of the user's instead of noise.

    difflab img2img fashion-text shirt.png --prompt "a dress" --out dresses.png
    difflab inpaint fashion-text bag.png mask.png --prompt "a handbag" --out filled.png

img2img noises the picture to --strength and denoises it toward the prompt (SDEdit, Meng et
al. 2022); inpaint redraws the white part of the mask and keeps the rest. Input files are
read, and refused with a reason, before the model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from difflab import viz
from difflab.argtypes import float_in
from difflab.checkpoints.names import resolve_checkpoint
from difflab.checkpoints.store import peek_config
from difflab.cli.errors import CLIError, writing
from difflab.cli.inputs import CHECKPOINT_HELP, check_output_file
from difflab.cli.sampling import (
    add_sampling_arguments,
    check_grid,
    grid_scale,
    load_generator,
    sampling_kwargs,
)
from difflab.data.transforms import pil_to_array, resize_center_crop, upright_size
from difflab.pipeline import (
    DEFAULT_IMG2IMG_STRENGTH,
    as_image_tensor,
    as_mask_tensor,
    read_image_file,
)


def add_img2img_arguments(im: argparse.ArgumentParser) -> None:
    """The flags of `difflab img2img`; sets func=cmd_img2img."""
    im.add_argument("checkpoint", help=CHECKPOINT_HELP)
    im.add_argument("image", help="image file (converted to the model's mode; the model's size, "
                    "or --resize)")
    _add_resize_argument(im)
    im.add_argument(
        "--strength",
        type=float_in(0, 1),
        help="0 keeps the image (a latent model's through its autoencoder, which loses "
        f"detail), 1 ignores it (default: {DEFAULT_IMG2IMG_STRENGTH:g}, the "
        "smallest strength that changes the class as often as 80%% of the best; BENCHMARKS.md)",
    )
    add_sampling_arguments(im, default_n=4)
    _add_class_argument(im)
    im.add_argument("--out", default="img2img.png", help="FILE.png (default img2img.png)")
    im.set_defaults(func=cmd_img2img)


def add_inpaint_arguments(ip: argparse.ArgumentParser) -> None:
    """The flags of `difflab inpaint`; sets func=cmd_inpaint."""
    ip.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ip.add_argument("image", help="image file (converted to the model's mode; the model's size, "
                    "or --resize)")
    ip.add_argument("mask", help="mask image of the image's size: white = fill (each pixel "
                    "of 128 or more of 255), black = keep")
    _add_resize_argument(ip)
    add_sampling_arguments(ip, default_n=4)
    _add_class_argument(ip)
    ip.add_argument("--out", default="inpaint.png", help="FILE.png (default inpaint.png)")
    ip.set_defaults(func=cmd_inpaint)


def _add_resize_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resize",
        action="store_true",
        help="fit a picture (and mask) of another size to the model's as training pictures "
        "are: the shorter side resized, the centre square kept (default: refuse another size)",
    )


def _fit_image(picture: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    """The picture cut exactly as a training picture is (difflab.data.transforms.pil_to_array:
    upright, colours converted, the shorter side resized, the centre square kept), as uint8
    (C, H, W) of the model's `shape`; said when its size changes."""
    _say_fit("image", upright_size(picture), shape[1])
    return pil_to_array(picture, shape[0], shape[1])


def _say_colours(picture: Image.Image, channels: int) -> None:
    """Say when the picture's colours are converted to the model's (a colour photo for a grey
    model, or the other way round), with or without --resize: a red shirt read as grey 76
    should not come as a surprise."""
    grey = picture.mode in ("1", "L", "LA", "I", "I;16", "F")
    if grey != (channels == 1):
        print(f"difflab: image {'grey' if grey else 'colour'} -> "
              f"{'grey' if channels == 1 else 'RGB'} (the model's)")


def _fit_mask(mask: Image.Image, side: int) -> Image.Image:
    """The mask cut as its picture is, by nearest neighbour, so that it stays a mask."""
    upright = ImageOps.exif_transpose(mask)
    _say_fit("mask", upright.size, side)
    return resize_center_crop(upright, side, Image.Resampling.NEAREST)


def _say_fit(what: str, size: tuple[int, int], side: int) -> None:
    w, h = size
    if (w, h) != (side, side):
        print(f"difflab: --resize: {what} {w}x{h} -> {side}x{side} (shorter side resized"
              f"{', centre cropped' if w != h else ''})")


def _add_class_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        help="class name or index for a class-conditional model (repeatable: the results "
        "take the classes in turn)",
    )


def _edit_output(args: argparse.Namespace) -> Path:
    """img2img's and inpaint's --out, checked before any work."""
    out = check_output_file(args.out, "--out")
    if out.suffix != ".png":
        raise CLIError(f"--out must end in .png, got {out.name!r}")
    return out


def _check_turns(args: argparse.Namespace) -> None:
    """The results take the prompts (or classes) in turn: more of them than -n would leave
    some undrawn, after lines that said how each was read."""
    for flag, given in (("--prompt", args.prompt), ("--class", args.classes)):
        if given and len(given) > args.n:
            raise CLIError(f"{len(given)} {flag} values and -n {args.n}: the results take them "
                           f"in turn, so {len(given) - args.n} would not be drawn; give -n "
                           f"{len(given)} or more")


def _check_sizes_first(checkpoint: str, image: Image.Image, mask: Image.Image | None = None,
                       resize: bool = False) -> None:
    """Refuse a picture or mask of the wrong size before the model loads (seconds for a text
    model): the checkpoint's config.json names the size its pictures have. The pipeline checks
    again; a config.json that cannot be read here is left to the load to explain. With
    `resize` the sizes are fitted after the load instead."""
    try:
        config = peek_config(resolve_checkpoint(checkpoint)) or {}
        shape = tuple(int(v) for v in config["image_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        shape = ()
    w, h = upright_size(image)
    if resize and mask is not None:  # fitted apart, they must cover the same picture
        mw, mh = upright_size(mask)
        if (mw, mh) != (w, h):
            raise CLIError(f"mask is {mw}x{mh}, image {w}x{h}; they must be the same size "
                           "(--resize then fits both to the model's)")
    if len(shape) != 3 or resize:
        return
    if (w, h) != (shape[2], shape[1]):
        raise CLIError(f"image is {w}x{h} but the model draws {shape[2]}x{shape[1]}; add "
                       "--resize to fit it as training pictures are, or resize it first")
    as_image_tensor(image, shape, "image")
    if mask is not None:
        as_mask_tensor(mask, shape)


def _save_edits(images, args: argparse.Namespace) -> int:
    """Write the results as one PNG grid at --out."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing(out):
        viz.save_grid(images, out, nrow=args.nrow or 8, scale=grid_scale(args),
                      padding=0 if args.bare else 2)
    print(f"difflab: wrote {len(images)} image{'s' if len(images) != 1 else ''} to {out}")
    return 0


def cmd_img2img(args: argparse.Namespace) -> int:
    """Noise the image to --strength and denoise it toward the prompt, -n times."""
    _edit_output(args)
    _check_turns(args)
    image = read_image_file(args.image, "image")  # a bad file is told before the model loads
    _check_sizes_first(args.checkpoint, image, resize=args.resize)
    gen = load_generator(args)
    check_grid(args, gen.image_shape)
    _say_colours(image, gen.image_shape[0])
    if args.resize:
        image = _fit_image(image, gen.image_shape)
    strength = args.strength
    if strength is None:  # the pipeline's measured default (bench/img2img_strength.py)
        strength = DEFAULT_IMG2IMG_STRENGTH
        print(f"difflab: strength {strength:g} (the default; --strength overrides)")
    kw = sampling_kwargs(args, gen, args.classes, strength=strength)
    prompt = kw.pop("prompt")
    images = gen.img2img(image, prompt, strength=strength, n=args.n, **kw)
    return _save_edits(images, args)


def cmd_inpaint(args: argparse.Namespace) -> int:
    """Redraw the mask's white part of the image toward the prompt, -n times."""
    _edit_output(args)
    _check_turns(args)
    image = read_image_file(args.image, "image")
    mask = read_image_file(args.mask, "mask")
    _check_sizes_first(args.checkpoint, image, mask, resize=args.resize)
    gen = load_generator(args)
    check_grid(args, gen.image_shape)
    _say_colours(image, gen.image_shape[0])
    if args.resize:
        image = _fit_image(image, gen.image_shape)
        mask = _fit_mask(mask, gen.image_shape[1])
    kw = sampling_kwargs(args, gen, args.classes)
    prompt = kw.pop("prompt")
    images = gen.inpaint(image, mask, prompt, n=args.n, **kw)
    return _save_edits(images, args)

