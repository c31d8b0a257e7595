"""A Hugging Face `datasets` dataset saved on disk (`Dataset.save_to_disk`), read with
`datasets.load_from_disk` and decoded once into uint8 (N, C, H, W) like an image folder.

`datasets` is an optional extra (pip install 'difflab[datasets]'); it is imported only
when this loader is used.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import DatasetNotFoundError, ImageData
from .image_folder import _MAX_LISTED, ON_BAD_IMAGE, BadImageError, BadImageWarning
from .transforms import convert_channels, pil_to_array


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "loading a Hugging Face dataset needs the `datasets` package, which is not "
            "installed: pip install 'difflab[datasets]' (or pip install datasets)"
        ) from e
    return datasets


def _to_pil(value: Any) -> Image.Image:
    """An image cell as PIL: a PIL image, {"bytes", "path"} (undecoded Image feature), a
    path, raw encoded bytes, or an array (H, W) / (H, W, C)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
        raise ValueError("image cell holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value)
    array = np.asarray(value)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)


def load_hf_dataset(
    path: str | os.PathLike,
    *,
    split: str = "train",
    image_column: str = "image",
    label_column: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    on_bad_image: str = "skip",
) -> ImageData:
    """Load a dataset saved with save_to_disk. A DatasetDict is indexed by `split`; a
    single Dataset has no splits and is read whole for split="train"."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r}: allowed {', '.join(ON_BAD_IMAGE)}")
    datasets = _import_datasets()
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"Hugging Face dataset folder {path} does not exist")
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(
                f"{path} has no split {split!r}: it has {', '.join(sorted(loaded.keys()))}"
            )
        table = loaded[split]
    elif split != "train":
        raise ValueError(f"{path} holds a single dataset without splits; use split='train'")
    else:
        table = loaded
    for column in (image_column, label_column):
        if column is not None and column not in table.column_names:
            raise ValueError(
                f"{path}: no column {column!r}; columns are {', '.join(table.column_names)}"
            )

    image_feature = getattr(datasets, "Image", None)
    if image_feature is not None and isinstance(table.features[image_column], image_feature):
        # Keep the encoded bytes so that a corrupt image fails alone, not the whole column.
        table = table.cast_column(image_column, image_feature(decode=False))
    arrays, keep, bad = [], [], []
    for i, cell in enumerate(table[image_column]):
        try:
            arrays.append(pil_to_array(_to_pil(cell), channels, image_size))
            keep.append(i)
        except Exception as e:  # PIL plugins raise many types on corrupt data
            reason = f"{path} row {i}: {type(e).__name__}: {e}"
            if on_bad_image == "error":
                raise BadImageError(f"cannot read image at {reason}") from e
            bad.append(reason)
    if bad:
        listed = "\n  ".join(bad[:_MAX_LISTED])
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) of {len(table)}:\n  {listed}",
            BadImageWarning,
            stacklevel=2,
        )
    if not arrays:
        raise DatasetNotFoundError(f"{path}: no readable images in column {image_column!r}")
    sizes = {a.shape[1:] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"{path}: images have {len(sizes)} different sizes; set image_size "
            f"(--set data.image_size=N) to resize and centre-crop them to one size"
        )
    target_channels = channels or max(a.shape[0] for a in arrays)
    images = np.stack([convert_channels(a[None], target_channels)[0] for a in arrays])

    labels = class_names = None
    if label_column is not None:
        values = table[label_column]
        feature = table.features[label_column]
        names = getattr(feature, "names", None)
        if names is not None:  # a ClassLabel column: integers with names
            class_names = tuple(names)
            labels = torch.tensor([int(values[i]) for i in keep], dtype=torch.int64)
        else:  # any other column: its distinct values, sorted, become the classes
            class_names = tuple(sorted({str(v) for v in values}))
            index = {name: k for k, name in enumerate(class_names)}
            labels = torch.tensor([index[str(values[i])] for i in keep], dtype=torch.int64)
    return ImageData(torch.from_numpy(images), labels, class_names, f"hf:{path}/{split}")
