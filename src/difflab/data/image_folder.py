"""Any folder of images (png, jpg, jpeg, webp, bmp; searched recursively), decoded once
into one uint8 array (N, C, H, W) so that epochs are plain tensor indexing.

Images are made grey or RGB (`channels`), resized on the shorter side and centre-cropped
(`image_size`), optionally labelled by the name of their first-level sub-folder (classes
sorted by name, like torchvision's ImageFolder). Hidden files and folders (".name", as
macOS "._x.png" resource forks) are ignored. An unreadable image is either skipped, with
one warning naming every skipped path, or an error naming the path (`on_bad_image`).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DatasetNotFoundError, ImageData
from .transforms import convert_channels, pil_to_array

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ON_BAD_IMAGE = ("skip", "error")
_MAX_LISTED = 20  # bad paths shown in one message


class BadImageError(ValueError):
    """An image file could not be decoded (on_bad_image="error")."""


class BadImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped (on_bad_image="skip")."""


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under root, recursively, sorted by relative path; hidden ones left out."""
    root = Path(root)
    found = []
    seen = set()  # real paths of visited folders: symlinks may form cycles
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _decode(path: Path, channels: int | None, size: int | None) -> np.ndarray | str:
    """The image as uint8 (C, H, W), or the reason it could not be read."""
    try:
        with Image.open(path) as image:
            return pil_to_array(image, channels, size)
    except Exception as e:  # PIL plugins raise many types on corrupt data
        return f"{type(e).__name__}: {e}"


def load_image_folder(
    root: str | os.PathLike,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    folder_labels: bool = False,
    on_bad_image: str = "skip",
    num_workers: int | None = None,
) -> ImageData:
    """Decode every image under root into memory.

    image_size: None keeps the native size (then all images must share it), else the
    shorter side is resized to it and the centre square cropped. channels: 1, 3, or None
    (1 when every image is grey, else 3). folder_labels: label each image by its
    first-level sub-folder. num_workers: decoding threads (default min(8, CPUs)).
    """
    root = Path(root).expanduser()
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r}: allowed {', '.join(ON_BAD_IMAGE)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}: allowed 1 (grey), 3 (RGB) or None (auto)")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size={image_size!r}: must be a positive integer or None")
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist or is not a folder")
    paths = list_images(root)
    if not paths:
        raise DatasetNotFoundError(
            f"no images found in {root} (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)}, any letter case)"
        )

    class_names = None
    if folder_labels:
        loose = [p for p in paths if p.parent == root]
        if loose:
            raise ValueError(
                f"folder_labels=True labels images by sub-folder, but {len(loose)} image(s) "
                f"lie directly in {root}, e.g. {loose[0]}; move them into a class folder"
            )
        class_names = tuple(sorted({p.relative_to(root).parts[0] for p in paths}))

    workers = num_workers or min(8, os.cpu_count() or 1)
    arrays, kept, bad = [], [], []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        results = pool.map(lambda p: _decode(p, channels, image_size), paths)
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, str):
                if on_bad_image == "error":
                    raise BadImageError(f"cannot read image {path}: {result}")
                bad.append((path, result))
            else:
                arrays.append(result)
                kept.append(path)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # fail fast: drop queued decodes
    if bad:
        listed = "\n".join(f"  {p}: {why}" for p, why in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) of {len(paths)} in {root}:\n{listed}{more}",
            BadImageWarning,
            stacklevel=2,
        )
    if not arrays:
        raise DatasetNotFoundError(f"none of the {len(paths)} image files in {root} is readable")

    sizes = {a.shape[1:] for a in arrays}
    if len(sizes) > 1:
        examples = {}
        for path, a in zip(kept, arrays, strict=True):
            examples.setdefault(a.shape[1:], path)
        shown = ", ".join(f"{p.name} {w}x{h}" for (h, w), p in list(examples.items())[:4])
        raise ValueError(
            f"images in {root} have {len(sizes)} different sizes ({shown}); set image_size "
            f"(--set data.image_size=N) to resize and centre-crop them all to NxN"
        )
    target_channels = channels or max(a.shape[0] for a in arrays)
    images = np.stack(
        [convert_channels(a[None], target_channels)[0] for a in arrays]
    )  # (N, C, H, W)

    labels = None
    if class_names is not None:
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in kept])
    return ImageData(torch.from_numpy(images), labels, class_names, f"image_folder:{root}")
