"""The Edit tab: img2img and inpainting, as `difflab img2img` and `difflab inpaint` run them.

An image comes from an upload (in the sketch pad, where strokes drawn on it make the mask) and
goes through `read_image_file`, the CLI's reader, which refuses a file that claims more
pixels than difflab reads before decoding it; the Generator converts it to the model's
channels and refuses a size other than the model's, naming both. The mask is an uploaded
mask image (white = redraw, as for the CLI) or, without one, every pixel a stroke covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import viz
from difflab.pipeline import DEFAULT_IMG2IMG_STRENGTH, Generator, read_image_file
from difflab.web.errors import collecting_warnings
from difflab.web.generate import (
    GRID_SCALE,
    Request,
    check_numbers,
    generator_kwargs,
    prompt_notes,
    settings_note,
    text_or_none,
    unused_guidance_notes,
    work_folder,
)
from difflab.web.limits import Limits
from difflab.web.models import ModelStore


@dataclass
class Edited:
    """The edit's results (uint8 (N, C, H, W)), a grid to download, notes for beside it."""

    images: torch.Tensor
    grid: Path
    notes: list[str]


def sketch_parts(value: Any) -> tuple[str | None, list[str]]:
    """(the uploaded image's file, the stroke layers' files) of the sketch pad's value
    (gradio's ImageEditor with type="filepath": background, layers, composite)."""
    if not value:
        return None, []
    if isinstance(value, str | Path):
        return str(value), []
    background = value.get("background")
    layers = [layer for layer in (value.get("layers") or []) if layer]
    return (str(background) if background else None), [str(layer) for layer in layers]


def stroke_mask(layers: list[str]) -> np.ndarray | None:
    """Where any stroke layer is painted (alpha > 0), as a bool (H, W) mask; None when nothing
    was drawn."""
    mask = None
    for layer in layers:
        image = read_image_file(layer, "sketch layer").convert("RGBA")
        painted = np.asarray(image)[:, :, 3] > 0
        mask = painted if mask is None else mask | painted
    if mask is None or not mask.any():
        return None
    return mask


def strength_value(value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_IMG2IMG_STRENGTH
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"strength must be a number from 0 to 1, got {value!r}")
    return float(value)


def _prepare(store: ModelStore, limits: Limits, req: Request) -> tuple[Generator, dict]:
    n, steps, seed = check_numbers(limits, req)
    gen = store.load(req.model)
    prompt = text_or_none(req.prompt)
    negative = text_or_none(req.negative_prompt, "negative prompt")
    kw, settings = generator_kwargs(
        gen, sampler=req.sampler, steps=steps, seed=seed, n=n, guidance=req.guidance,
        classes=None, prompt=[prompt] if prompt else None,
        negative_prompt=[negative] if negative else None, autoguidance=req.autoguidance,
    )
    kw.pop("classes")  # as cmd_img2img / cmd_inpaint: text or nothing, no class
    return gen, kw | {"_settings": settings, "_n": n,
                      "_notes": unused_guidance_notes(gen, req, kw)}


def _finish(gen: Generator, images: torch.Tensor, kw: dict, caught: list[str],
            what: str) -> Edited:
    grid = viz.save_grid(images, work_folder() / f"{what}.png", nrow=8, scale=GRID_SCALE)
    notes = [settings_note(kw, kw["_settings"]), *kw["_notes"]] + prompt_notes(gen, kw)
    notes += [f"warning: {w}" for w in caught]
    return Edited(images, grid, notes)


def img2img(store: ModelStore, limits: Limits, req: Request, sketch: Any,
            strength: Any = None) -> Edited:
    """Re-draw the uploaded image toward the prompt: noise it to `strength`, denoise."""
    image_file, _ = sketch_parts(sketch)
    if image_file is None:
        raise ValueError("no image: upload one to edit")
    strength = strength_value(strength)
    image = read_image_file(image_file, "image")
    gen, kw = _prepare(store, limits, req)
    call = {k: v for k, v in kw.items() if not k.startswith("_") and k != "prompt"}
    with collecting_warnings() as caught:
        images = gen.img2img(image, kw["prompt"], strength=strength, n=kw["_n"], **call)
    edited = _finish(gen, images, kw, store.notes_for(gen) + caught, "img2img")
    edited.notes.insert(1, f"strength {strength:g}")
    return edited


def inpaint(store: ModelStore, limits: Limits, req: Request, sketch: Any,
            mask_file: str | None = None) -> Edited:
    """Redraw the masked part of the uploaded image (an uploaded mask, else the strokes),
    keep the rest exactly."""
    image_file, layers = sketch_parts(sketch)
    if image_file is None:
        raise ValueError("no image: upload one to inpaint")
    image = read_image_file(image_file, "image")
    if mask_file:
        mask = read_image_file(mask_file, "mask")
    else:
        mask = stroke_mask(layers)
        if mask is None:
            raise ValueError("no mask: paint over the part to redraw, or upload a mask image "
                             "(white = redraw)")
    gen, kw = _prepare(store, limits, req)
    call = {k: v for k, v in kw.items() if not k.startswith("_") and k != "prompt"}
    with collecting_warnings() as caught:
        images = gen.inpaint(image, mask, kw["prompt"], n=kw["_n"], **call)
    return _finish(gen, images, kw, store.notes_for(gen) + caught, "inpaint")
