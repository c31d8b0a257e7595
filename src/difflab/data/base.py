"""The in-memory forms every dataset is loaded into, and class-name lookup.

Images: one uint8 tensor (N, C, H, W) plus optional int64 labels. Keeping the whole set as
uint8 costs a quarter of float32 memory and makes an epoch a matter of indexing one tensor
(see loader.BatchIterator). 2-D toy sets are float32 points (N, 2).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class DatasetNotFoundError(FileNotFoundError):
    """No source of a dataset could be found or fetched; the message says how to get one."""


class ChecksumError(ValueError):
    """A data file's checksum is not the published one."""


def default_cache_dir() -> Path:
    """Where downloads go: $DIFFLAB_CACHE, else $XDG_CACHE_HOME/difflab, else ~/.cache/difflab."""
    if os.environ.get("DIFFLAB_CACHE"):
        return Path(os.environ["DIFFLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "difflab"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class ImageData:
    """A whole image dataset in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None when the source has no labels
    class_names: tuple[str, ...] | None  # class_names[label] is the label's name
    name: str  # where it came from, e.g. "fashion_mnist/train"
    # What loading did that a user should hear of (images resized, converted, files skipped)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageData.images must be a uint8 tensor (N, C, H, W), got "
                f"{self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        _check_labels(self.labels, len(self.images), self.class_names, self.name)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


@dataclass
class PointData:
    """A 2-D toy dataset in memory (see toy2d.py)."""

    points: torch.Tensor  # (N, 2) float32
    labels: torch.Tensor | None  # (N,) int64: mixture component / moon, or None
    class_names: tuple[str, ...] | None
    name: str
    mixture: Any = None  # toy2d.GaussianMixture for the mixture sets, else None

    def __post_init__(self) -> None:
        if not self.points.is_floating_point() or self.points.ndim != 2:
            raise ValueError(
                f"PointData.points must be a float tensor (N, D), got "
                f"{self.points.dtype} with shape {tuple(self.points.shape)}"
            )
        _check_labels(self.labels, len(self.points), self.class_names, self.name)

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


def _check_labels(
    labels: torch.Tensor | None,
    n: int,
    class_names: Sequence[str] | None = None,
    source: str = "the dataset",
) -> None:
    if labels is None:
        return
    if labels.dtype != torch.int64 or labels.shape != (n,):
        raise ValueError(
            f"labels must be an int64 tensor of shape ({n},), got {labels.dtype} "
            f"with shape {tuple(labels.shape)}"
        )
    if class_names is not None and n:
        # A label outside the class list would index past the class embedding (or hit the
        # null label of classifier-free guidance) and train silently wrong.
        bad = (labels < 0) | (labels >= len(class_names))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"{source}: label {int(labels[i])} of sample {i} is out of range; "
                f"{len(class_names)} classes allow labels 0..{len(class_names) - 1} "
                f"({int(bad.sum())} bad labels in all)"
            )


def _normalise(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def names_every_class(value: object) -> bool:
    """Whether a class a user gave is "all" (any case): every class in turn."""
    return isinstance(value, str) and value.strip().lower() == "all"


def resolve_class(
    name_or_int: str | int,
    class_names: Sequence[str],
    aliases: Mapping[str, int] | None = None,
) -> int:
    """Return the index of a class given by index, name or alias (case-insensitive).

    Integers (and strings of digits) are taken as indices and range-checked. Raises
    ValueError listing the allowed names when nothing matches.
    """
    n = len(class_names)
    if isinstance(name_or_int, bool):
        raise ValueError(f"class must be a name or an index, got {name_or_int!r}")
    if isinstance(name_or_int, int) or (  # "-1" too: an index out of range, not a name
        isinstance(name_or_int, str) and name_or_int.strip().removeprefix("-").isdigit()
    ):
        index = int(name_or_int)
        if not 0 <= index < n:
            raise ValueError(f"class index {index} is out of range: allowed 0..{n - 1}")
        return index
    if not isinstance(name_or_int, str):
        raise ValueError(
            f"class must be a name or an index, got {type(name_or_int).__name__} {name_or_int!r}"
        )
    key = _normalise(name_or_int)
    table = {_normalise(c): i for i, c in enumerate(class_names)}
    table.update({_normalise(a): i for a, i in (aliases or {}).items()})
    if key in table:
        return table[key]
    allowed = ", ".join(f"{i}={c!r}" for i, c in enumerate(class_names))
    extra = ""
    if aliases:
        extra = "; aliases: " + ", ".join(sorted(repr(a) for a in aliases))
    raise ValueError(f"unknown class {name_or_int!r}: allowed {allowed}{extra}")
