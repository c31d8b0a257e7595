"""Any folder of images (png, jpg, jpeg, webp, bmp, gif, tif; searched recursively), decoded
once into one uint8 array (N, C, H, W) so that epochs are plain tensor indexing.

Images are made grey or RGB (`channels`), resized on the shorter side and centre-cropped
(`image_size`), optionally labelled by the name of their first-level sub-folder (classes
sorted by name, like torchvision's ImageFolder). Hidden files and folders (".name", as
macOS "._x.png" resource forks) are ignored. An unreadable image is either skipped, with
one warning naming every skipped path, or an error naming the path (`on_bad_image`).
Without `image_size` the files' headers are read first, so that a folder of mixed or
non-square sizes is refused before any photo is decoded. What loading did (images resized,
cropped or converted; picture files of kinds it cannot read) comes back as the data's notes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DatasetNotFoundError, ImageData
from .transforms import convert_channels, pil_to_array, upright_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pictures Pillow cannot decode here: counted and named, so that a folder of phone photos
# (HEIC) is not read as empty without a word.
UNREADABLE_KINDS = (".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".raw", ".cr2", ".cr3",
                    ".nef", ".arw", ".dng", ".orf", ".rw2")
ON_BAD_IMAGE = ("skip", "error")
_MAX_LISTED = 20  # bad paths shown in one message


class BadImageError(ValueError):
    """An image file could not be decoded (on_bad_image="error")."""


class BadImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped (on_bad_image="skip")."""


def _files(root: Path) -> Iterator[Path]:
    """Every file under root, recursively, hidden files and folders left out; linked folders
    followed once each (links may form cycles)."""
    seen = set()  # real paths of visited folders
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield from (Path(dirpath) / name for name in filenames if not name.startswith("."))


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under root, recursively, sorted by relative path; hidden ones left out."""
    root = Path(root)
    found = [p for p in _files(root) if p.name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def list_unreadable_kinds(root: Path, folders: set[str] | None = None) -> dict[str, int]:
    """How many picture files of each kind Pillow cannot read lie under root (hidden ones
    left out; only in these first-level `folders` when given), e.g. {".heic": 3}."""
    found: dict[str, int] = {}
    for path in _files(root):
        parts = path.relative_to(root).parts
        if folders is not None and (len(parts) == 1 or parts[0] not in folders):
            continue  # a loose file is no class's
        kind = path.suffix.lower()
        if kind in UNREADABLE_KINDS:
            found[kind] = found.get(kind, 0) + 1
    return found


@dataclass(frozen=True)
class Decoded:
    """One image as uint8 (C, H, W), with its file's mode and size before conversion."""

    array: np.ndarray
    mode: str
    size: tuple[int, int]  # (width, height)


def _decode(path: Path, channels: int | None, size: int | None) -> Decoded | str:
    """The decoded image, or the reason it could not be read."""
    try:
        with Image.open(path) as image:
            mode, native = image.mode, image.size
            return Decoded(pil_to_array(image, channels, size), mode, native)
    except Exception as e:  # PIL plugins raise many types on corrupt data
        return f"{type(e).__name__}: {e}"


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, EXIF rotation applied; None if unreadable."""
    try:
        with Image.open(path) as image:
            return upright_size(image)
    except Exception:  # noqa: BLE001 (the decode says why, or skips it)
        return None


def _refuse_mixed_sizes(root: Path, sizes: dict[tuple[int, int], Path]) -> None:
    """Without an image_size every image must be of one square size."""
    if len(sizes) > 1:
        shown = ", ".join(f"{p.name} {w}x{h}" for (w, h), p in list(sizes.items())[:4])
        raise ValueError(
            f"images in {root} have {len(sizes)} different sizes ({shown}); set image_size "
            f"(--set data.image_size=N) to resize and centre-crop them all to NxN"
        )
    ((w, h), path), = sizes.items()
    if w != h:
        raise ValueError(
            f"images in {root} are {w}x{h} ({path.name}), not square; set image_size "
            f"(--set data.image_size=N) to resize and centre-crop them to NxN"
        )


def load_image_folder(
    root: str | os.PathLike,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    folder_labels: bool = False,
    on_bad_image: str = "skip",
    num_workers: int | None = None,
    keep_classes: Sequence[str | int] | None = None,
) -> ImageData:
    """Decode every image under root into memory.

    image_size: None keeps the native size (then all images must share it), else the
    shorter side is resized to it and the centre square cropped. channels: 1, 3, or None
    (1 when every image is grey, else 3). folder_labels: label each image by its
    first-level sub-folder; a class folder without a readable image is left out, with a
    warning. keep_classes: with folder_labels, decode only these classes' folders (names or
    indices; the labels stay those of all the folders, for data.classes to select from).
    num_workers: decoding threads (default min(8, CPUs)).
    """
    root = Path(root).expanduser()
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r}: allowed {', '.join(ON_BAD_IMAGE)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}: allowed 1 (grey), 3 (RGB) or None (auto)")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size={image_size!r}: must be a positive integer or None")
    if root.is_file():
        raise DatasetNotFoundError(f"image folder {root} is a file; give the folder that "
                                   "holds the images")
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    paths = list_images(root)
    if not paths:
        unreadable = _unreadable_note(list_unreadable_kinds(root))
        raise DatasetNotFoundError(
            f"no images found in {root} (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)}, any letter case)"
            + (f"; it holds {unreadable}" if unreadable else "")
        )

    class_names = None
    wanted: set[str] = set()
    if folder_labels:
        loose = [p for p in paths if p.parent == root]
        if loose:
            raise ValueError(
                f"folder_labels=True labels images by sub-folder, but {len(loose)} image(s) "
                f"lie directly in {root}, e.g. {loose[0]}; move them into a class folder"
            )
        class_names = tuple(sorted({p.relative_to(root).parts[0] for p in paths}))
        # a class folder with no image file at all (the commonest empty class) is no class
        # either, and said as one that holds only unreadable files is (below)
        bare = sorted(d.name for d in root.iterdir() if d.is_dir()
                      and not d.name.startswith(".") and d.name not in class_names)
        if bare and not keep_classes:
            warnings.warn(f"class folder(s) {', '.join(bare)} in {root} hold no image file; "
                          "left out of the classes", BadImageWarning, stacklevel=2)
        wanted = _named_classes(keep_classes, class_names)
        if wanted:  # the other classes' pictures are not decoded, nor counted in the notes
            paths = [p for p in paths if p.relative_to(root).parts[0] in wanted]

    if image_size is None:  # refused from the headers, before decoding every photo
        sizes: dict[tuple[int, int], Path] = {}
        for path in paths:
            size = _header_size(path)
            if size is not None:
                sizes.setdefault(size, path)
        if sizes:
            _refuse_mixed_sizes(root, sizes)

    workers = num_workers or min(8, os.cpu_count() or 1)
    decoded: list[Decoded] = []
    kept, bad = [], []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        results = pool.map(lambda p: _decode(p, channels, image_size), paths)
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, str):
                if on_bad_image == "error":
                    raise BadImageError(f"cannot read image {path}: {result}")
                bad.append((path, result))
            else:
                decoded.append(result)
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
    if not decoded:
        raise DatasetNotFoundError(f"none of the {len(paths)} image files in {root} is readable")
    if image_size is None:  # headers can disagree with the pixels (a bad EXIF tag)
        examples: dict[tuple[int, int], Path] = {}
        for path, d in zip(kept, decoded, strict=True):
            examples.setdefault((d.array.shape[2], d.array.shape[1]), path)
        _refuse_mixed_sizes(root, examples)
    target_channels = channels or max(d.array.shape[0] for d in decoded)
    images = np.stack(
        [convert_channels(d.array[None], target_channels)[0] for d in decoded]
    )  # (N, C, H, W)

    labels = None
    if class_names is not None:
        found = {p.relative_to(root).parts[0] for p in kept}
        empty = [c for c in class_names if c not in found
                 and (not wanted or c in wanted)]
        if empty:
            warnings.warn(f"class folder(s) {', '.join(empty)} in {root} hold no readable "
                          "image; left out of the classes", BadImageWarning, stacklevel=2)
            class_names = tuple(c for c in class_names if c not in empty)
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in kept])
    unreadable = list_unreadable_kinds(root, wanted or None)
    notes = _notes(decoded, images.shape, image_size, unreadable)
    return ImageData(torch.from_numpy(images), labels, class_names, f"image_folder:{root}",
                     notes)


def _notes(decoded: list[Decoded], shape: tuple[int, ...], image_size: int | None,
           unreadable: dict[str, int]) -> tuple[str, ...]:
    """What loading did to the images, in words (ImageData.notes)."""
    n, c, side = shape[0], shape[1], shape[2]
    notes = []
    if image_size is not None:
        resized = sum(min(d.size) != side for d in decoded)  # size: before EXIF rotation
        cropped = sum(d.size[0] != d.size[1] for d in decoded)
        parts = ([f"{resized} of {n} images resized to {side} on the shorter side"]
                 if resized else [])
        if cropped:
            parts.append(f"{cropped} {'' if resized else f'of {n} images '}centre-cropped to "
                         f"{side}x{side}")
        if parts:
            notes.append(" and ".join(parts))
    target = "L" if c == 1 else "RGB"
    modes: dict[str, int] = {}
    for d in decoded:
        if d.mode != target:
            modes[d.mode] = modes.get(d.mode, 0) + 1
    if modes:
        listed = ", ".join(f"{count} {mode}" for mode, count in sorted(modes.items()))
        notes.append(f"converted to {'grey' if c == 1 else 'RGB'}: {listed} "
                     "(PIL modes; transparency flattened on white)")
    if unreadable:
        notes.append(f"not read: {_unreadable_note(unreadable)}")
    return tuple(notes)


def _unreadable_note(unreadable: dict[str, int]) -> str:
    """"3 .heic file(s), ..." and what to do, or "" when there are none."""
    if not unreadable:
        return ""
    listed = ", ".join(f"{count} {kind}" for kind, count in sorted(unreadable.items()))
    return (f"{listed} file(s), kinds this build cannot decode; convert them to PNG or JPEG "
            "to train on them")


def _named_classes(keep: Sequence[str | int] | None, names: tuple[str, ...]) -> set[str]:
    """The folder names among `names` that `keep` (names or indices) asks for; the others
    are for data.classes to refuse."""
    if not keep:
        return set()
    return ({c for c in keep if isinstance(c, str) and c in names}
            | {names[c] for c in keep if isinstance(c, int) and 0 <= c < len(names)})
