"""Images and masks from users, in any usual form, to tensors of a model's shape.

A path, a PIL image, a numpy array or a torch tensor; (H, W), (C, H, W), (H, W, C) or a batch;
uint8 0..255 or float 0..1 / -1..1. Anything else is refused with one line that says what was
given and what is allowed; files are read as untrusted input (size limits before decoding).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from difflab.data.transforms import convert_channels, has_transparency, pil_to_array

Tensor = torch.Tensor


# Sizes an array's channel axis may have: 1 grey, 3 RGB, and 2 / 4 (grey or RGB with alpha),
# recognised only to be refused with a message that says so. Anything larger on the first
# (or last) axis of a 3-D array is a batch of grey images or a spatial side.
_CHANNEL_COUNTS = (1, 2, 3, 4)


def _size(h: int, w: int) -> str:
    """Width x height, as image tools and the image-folder errors write a picture's size."""
    return f"{w}x{h}"


def _as_array(x: Any) -> np.ndarray:
    """A numpy view of an array-like (tensors leave the GPU and the autograd graph)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16: widen low-precision floats first (exact for fp16 / bf16).
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


# The largest picture the web app takes as an upload: 16.7 megapixels (64 MB as RGBA) is far
# beyond any model here, and a server shares its memory among its users.
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
# The largest picture read from a file by the command line and the API: a phone's photo (48
# to 108 megapixels) is something a user hands img2img with --resize, while a file claiming
# more (a "decompression bomb": a few KB of PNG that inflate to gigabytes) is refused from its
# header, before anything is decoded. 120 MP is at most 480 MB as RGBA.
MAX_FILE_MEGAPIXELS = 120


def read_image_file(path: str | Path, what: str = "image") -> Any:
    """A PIL image decoded from `path`; any failure is a ValueError that names the file
    and what is wrong (missing, a folder, not an image, corrupt, too large)."""
    name = str(path)
    if not name.strip():  # Path("") is the current folder, which is never meant
        raise ValueError(f"the {what}'s file name is empty; give an image file")
    if not Path(path).exists():
        raise ValueError(f"cannot read {what} {name!r}: it does not exist")
    if Path(path).is_dir():
        raise ValueError(f"cannot read {what} {name!r}: it is a folder; give an image file")
    try:
        with warnings.catch_warnings():
            # Our limit is checked just below, with a message that gives the size; PIL's own
            # warning (over its MAX_IMAGE_PIXELS, which a process may have lowered) would say
            # less. Over twice PIL's limit, Image.open refuses by itself.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
            w, h = image.size
            if w * h > MAX_FILE_MEGAPIXELS * 1_000_000:
                raise ValueError(
                    f"it is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); difflab reads "
                    f"images of at most {MAX_FILE_MEGAPIXELS} megapixels"
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
    c, h, w = shape
    if isinstance(image, list | tuple) and image and not isinstance(image[0], int | float):
        parts = [as_image_tensor(part, shape, what) for part in image]
        return torch.cat(parts)
    if isinstance(image, str | Path):
        image = read_image_file(image, what)
    layout = "PIL"
    if isinstance(image, Image.Image):
        if has_transparency(image):  # a cut-out on black would vanish into the white: say so
            warnings.warn(f"{what} has transparent pixels; they are flattened on white, as "
                          "training pictures are (flatten it on another background first to "
                          "choose it: the shipped models' pictures are light on black)",
                          stacklevel=2)
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

    A pixel at least half-way to white is generated, whatever the type: bool, 0/1 and 0/255
    masks all work, a JPEG's near-black pixels (1-3 of 255) stay kept, and a soft brush
    counts from the middle of its edge (`redraw_pixels`). Accepted: a path or PIL image
    (converted to grey), or an array / tensor (H, W), (1, H, W), (H, W, 1), a batch (N, H, W) or
    (N, 1, H, W) / (N, H, W, 1), or a list of these. Its size must be the image's.
    """
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
    redraw = redraw_pixels(m)
    if not redraw.any():  # sampling would return the image unchanged, after all its steps
        raise ValueError(f"{what} marks nothing to redraw (no pixel is half-way to white or "
                         "lighter); its white pixels mark what inpainting draws")
    return torch.from_numpy(np.ascontiguousarray(redraw))


def redraw_pixels(mask: np.ndarray) -> np.ndarray:
    """The pixels of a mask that inpainting redraws: True, or at least half of white (128 of
    255 where any value exceeds 1, else 0.5 of 1), as diffusers binarises its masks at 0.5.
    Non-zero was the rule before, and a JPEG mask's near-black noise then redrew pixels
    meant to be kept."""
    if mask.dtype == np.bool_:
        return mask
    white = 255.0 if mask.max() > 1 else 1.0
    return mask >= white / 2
