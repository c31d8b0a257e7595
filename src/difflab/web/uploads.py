"""Uploads as the page's image widgets decode them, mended where gradio's own decoding fails.

The browser's widgets offer images only, but the HTTP API takes any file: gradio would answer
one that is not a picture with its own multi-line error (and a traceback in the log). Here it
is one line naming the upload, and the part of it, that is wrong.

gradio's sketch pad (ImageEditor) converts its picture to RGBA and saves it again in the
format its file name says; a JPEG cannot hold an alpha channel, so every .jpg upload failed
there with "cannot write mode RGBA as JPEG", though the command line reads the same file. The
pad's parts are therefore stored as PNG whatever they were called.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from difflab.pipeline.inputs import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from difflab.web.errors import page_error

# Formats whose files cannot hold the sketch pad's RGBA: stored as PNG instead.
NO_ALPHA_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def _as_png(file: Any) -> Any:
    """`file` (gradio's FileData) named .png when its name is of a format without alpha."""
    name = getattr(file, "orig_name", None)
    if not name or Path(name).suffix.lower() not in NO_ALPHA_SUFFIXES:
        return file
    return file.model_copy(update={"orig_name": str(Path(name).with_suffix(".png"))})


def _stored_as_png(payload: Any) -> Any:
    """The sketch pad's value (background, layers, composite) with each part named .png."""
    if not hasattr(payload, "background"):
        return payload
    return payload.model_copy(update={
        "background": _as_png(payload.background),
        "layers": [_as_png(layer) for layer in payload.layers or []],
        "composite": _as_png(payload.composite),
    })


def _parts(payload: Any, what: str) -> list[tuple[str, Any]]:
    """(what the part is, its FileData) for each file of an upload, the picture first."""
    if not hasattr(payload, "background"):
        return [(what, payload)]
    layers = [("sketch layer", layer) for layer in payload.layers or []]
    return [(what, payload.background), *layers, ("sketch", payload.composite)]


def _unreadable(file: Any) -> Exception | None:
    """Why PIL cannot decode `file`'s image (as gradio is about to), else None."""
    path = getattr(file, "path", None)
    if path is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{image.size}")
                image.load()
    except Exception as e:  # PIL's decoders raise many types on corrupt data
        return e
    return None


def _refusal(payload: Any, what: str, error: Exception) -> ValueError:
    """One line naming the upload (and which part of it) that gradio could not decode."""
    parts = _parts(payload, what)
    upload = parts[0][1]  # gradio's failure, when PIL reads every part (named by the picture)
    for part, file in parts:
        if (found := _unreadable(file)) is not None:
            what, upload, error = part, file, found
            break
    named = getattr(upload, "orig_name", None) or "upload"
    why = ("its header claims more pixels than difflab reads (at most "
           f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})"
           if isinstance(error, Image.DecompressionBombError)
           else "it is not an image difflab can read (PNG, JPEG, BMP, GIF, TIFF or WebP)")
    return ValueError(f"cannot read the {what} {named!r}: {why}")


def refuse_unreadable_uploads(component: Any, what: str) -> Any:
    """`component` (gr.Image or gr.ImageEditor) with its upload decoding wrapped: a JPEG given
    to the sketch pad is decoded (as PNG), and a file that is not a picture is refused in one
    line naming it, as every other refusal is."""
    import gradio as gr  # the web extra: imported only when the app is built
    decode = component.preprocess

    @functools.wraps(decode)
    def preprocess(payload):
        payload = _stored_as_png(payload)
        try:
            return decode(payload)
        except gr.Error:
            raise
        except Exception as e:  # PIL's decoders raise many types; their text names a temp file
            raise page_error(gr, _refusal(payload, what, e)) from e

    component.preprocess = preprocess
    return component
