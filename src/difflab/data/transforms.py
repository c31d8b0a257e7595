"""Conversions between stored images and what a network sees.

Stored: uint8 (N, C, H, W), 0..255. Network: float in [-1, 1] (x / 127.5 - 1, so 0 -> -1
and 255 -> 1 exactly). Decoding and resizing go through PIL: the shorter side is resized
to the target with an antialiased bilinear filter, then the centre is cropped.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 0..255 -> float in [-1, 1]."""
    return images.to(dtype).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map model-space values in [-1, 1] to uint8 pixels [0, 255] by a FIXED affine map; the
    inverse of to_float, and difflab's one such map (pictures, samples, saved files).

    pixel = floor((clamp(x, -1, 1) + 1) * 127.5 + 0.5), i.e. rounding half up, so
    -1 -> 0, 0 -> 128 (127.5 rounds up), 1 -> 255, 0.9 -> 242. Values outside [-1, 1] are
    clamped (+inf -> 255, -inf -> 0).

    This is deliberately NOT a per-image (or per-batch) min-max rescaling: an all-0.9 image
    stays light grey (242) instead of being stretched to white or black, so samples that
    drift towards saturation are visible as such. A uint8 tensor is returned unchanged (it is
    taken to be pixels already). NaN has no pixel value and raises ValueError rather than
    being painted over.
    """
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"to_uint8 expects a float tensor in [-1, 1] or uint8, got {x.dtype}")
    x = x.detach().to(torch.float32)
    if bool(torch.isnan(x).any()):
        raise ValueError(
            f"cannot display: {int(torch.isnan(x).sum())} of {x.numel()} values are NaN"
        )
    return torch.floor((x.clamp(-1.0, 1.0) + 1.0) * 127.5 + 0.5).to(torch.uint8)


def hflip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images (B, C, H, W) whose entry in flip (B,) bool is true."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def resize_center_crop(
    image: Image.Image, size: int, resample: int = Image.Resampling.BILINEAR
) -> Image.Image:
    """Resize so the shorter side is `size` (antialiased), then crop the centre square."""
    w, h = image.size
    if min(w, h) != size:
        scale = size / min(w, h)
        new_w = size if w <= h else max(size, round(w * scale))
        new_h = size if h <= w else max(size, round(h * scale))
        image = image.resize((new_w, new_h), resample)
        w, h = new_w, new_h
    if (w, h) != (size, size):
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def _flatten_mode(image: Image.Image) -> Image.Image:
    """Bring any PIL mode to "L" or "RGB": transparency composited over white, 16-bit
    grey scaled to 8 bits (PIL's own convert would clip it), a float picture in [0, 1]
    scaled to 0..255."""
    mode = image.mode
    if _carries_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(background, rgba).convert("RGB")
        return flat if mode not in ("LA", "La") else flat.convert("L")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode != "F":
            values = values / 257.0  # 16-bit range 0..65535 -> 0..255
        elif values.size and 0.0 <= values.min() and values.max() <= 1.0:
            # a float picture in [0, 1] (a scientific TIFF), as float arrays are read
            # (pipeline.inputs); one in 0..255 whose brightest pixel is 1 is black either way
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if mode in ("L", "RGB"):
        return image
    return image.convert("L" if mode == "1" else "RGB")


def _carries_alpha(image: Image.Image) -> bool:
    """Whether `image`'s mode holds transparency (an alpha channel, or a palette's)."""
    return image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info)


def has_transparency(image: Image.Image) -> bool:
    """Whether some pixel of `image` is not fully opaque (what _flatten_mode puts on white)."""
    return _carries_alpha(image) and image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) the image has once its EXIF orientation is applied (as pil_to_array
    does), read from the header: nothing is decoded or turned."""
    w, h = image.size
    orientation = image.getexif().get(0x0112, 1)  # 5-8: turned a quarter
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def pil_to_array(image: Image.Image, channels: int | None, size: int | None) -> np.ndarray:
    """Decode a PIL image to uint8 (C, H, W).

    channels: 1 (grey, ITU-R 601-2 luma), 3 (RGB) or None (1 when the image is grey,
    else 3). size: None keeps the native size, else shorter side resized + centre crop.
    EXIF orientation (photos from phones) is applied first.
    """
    if size is not None and image.format == "JPEG":
        # Let the JPEG decoder downscale by a power of two while staying at least twice
        # the target; decoding a 12-megapixel photo at 1/8 scale is far faster.
        w, h = image.size
        scale = 2 * size / min(w, h)
        if scale < 1:
            image.draft(image.mode, (int(w * scale) + 1, int(h * scale) + 1))
    image = ImageOps.exif_transpose(image)
    image = _flatten_mode(image)
    if channels == 1 and image.mode != "L":
        image = image.convert("L")
    elif channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None:
        image = resize_center_crop(image, size)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        return array[None].copy()
    array = array.transpose(2, 0, 1)
    if channels is None and (array[0] == array[1]).all() and (array[1] == array[2]).all():
        return array[:1].copy()  # an RGB file holding a grey picture
    return np.ascontiguousarray(array)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, C, H, W) with C in {1, 3} -> `channels` channels. Grey to RGB repeats;
    RGB to grey uses PIL's integer luma (R 299 + G 587 + B 114) / 1000."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if c == 3 and channels == 1:
        rgb = images.astype(np.uint32)
        luma = rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000
        return (luma >> 16).astype(np.uint8)[:, None]
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, C, H, W), C in {1, 3}, to (N, C, size, size): shorter side to
    `size` (PIL bilinear, antialiased), centre crop."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    mode = {1: "L", 3: "RGB"}[c]
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        array = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
        resized = np.asarray(resize_center_crop(Image.fromarray(array, mode), size))
        out[i] = resized if c == 1 else resized.transpose(2, 0, 1)
    return out
