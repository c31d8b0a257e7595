"""One configuration for every dataset, and the single entry point that loads it.

Which datasets exist, and their classes, are in catalog.py; this file checks a [data] table
against it (a class name `data.classes` cannot resolve fails here, at config time, with the
same lookup evaluation uses) and loads what it describes.

data = load_dataset(DataConfig(name="fashion_mnist", image_size=32))
loader = BatchIterator(data, batch_size=128, hflip=cfg.hflip, seed=0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import digits, fashion_mnist, mnist
from .base import ImageData, PointData, resolve_class
from .captions import CaptionTable, caption_table, quote_prompt
from .catalog import DATASET_NAMES, dataset_spec, find_dataset
from .fashion_attributes import attribute_caption_table, group_labels
from .hf import load_hf_dataset
from .image_folder import ON_BAD_IMAGE, load_image_folder
from .shapes import load_shapes, shapes_caption_table
from .shapes_grammar import PLACE_WORDS, parse_prompt
from .shapes_scene import IMAGE_SIZE as SHAPES_IMAGE_SIZE
from .toy2d import TOY2D_NAMES, make_toy2d
from .transforms import convert_channels, resize_images

SPLITS = ("train", "test")
# data.captions: "default" is the dataset's own captions (per class from caption_text/*.toml,
# or per image for shapes); "attributes" adds what each image shows, measured from its pixels
# (fashion_mnist only: tone and pattern, difflab.data.fashion_attributes).
CAPTION_SETS = ("default", "attributes")
ATTRIBUTE_CAPTIONED = ("fashion_mnist",)


@dataclass
class DataConfig:
    """Which data to train on. Loaded from the [data] table of a TOML config."""

    name: str = "fashion_mnist"  # one of DATASET_NAMES (catalog.py); an alias becomes the name
    root: str | None = None  # directory (IDX files, image folder, saved HF dataset)
    split: str = "train"  # "train" or "test"
    image_size: int | None = None  # None keeps the native size (28 for MNIST-likes)
    channels: int | None = None  # 1 or 3; None keeps the source's (grey sets stay 1)
    hflip: bool = False  # random left-right flips in training; wrong for digits
    classes: list[str | int] | None = None  # keep these only, relabelled 0..k-1 (name or index)
    on_bad_image: str = "skip"  # unreadable files: "skip" (one warning) or "error"
    folder_labels: bool = False  # image_folder: label images by first-level sub-folder
    image_column: str = "image"  # hf: column holding the images
    label_column: str | None = None  # hf: column holding the labels, if any
    download: bool = True  # fashion_mnist: may fetch the files when they are not found
    limit: int | None = None  # keep only the first `limit` samples (quick runs, tests)
    toy: str = "ring"  # toy2d: one of TOY2D_NAMES
    num_samples: int = 10_000  # toy2d: points drawn; shapes: scenes drawn (or test images)
    seed: int = 0  # toy2d, shapes: seed of the draw (the same seed, the same data)
    # shapes: the share (0 to 1) of two-phrase training scenes laid out to show a relation
    # ("a red circle left of a blue square"), so that their captions can state one.
    relations: float = 0.0
    # shapes: the share (0 to 1) of training captions that say where in the picture a phrase
    # stands ("a red circle on the left"), when its scene allows one.
    places: float = 0.0
    # Training captions of a text run: "default" or "attributes" (CAPTION_SETS). With
    # "attributes" each label is the image's (class, tone, pattern) group, an index into
    # fashion_attributes.GROUPS and the caption table, not a class: the data is the same.
    captions: str = "default"
    # How evenly training draws labels (classes, or caption groups): 0 shuffles the data,
    # each image once per epoch; above 0 image i is drawn with weight count(label)^-balance,
    # 1 every label equally often (data.loader.balanced_draw).
    balance: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        """Build from a mapping (a TOML table), refusing unknown keys."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown data setting(s) {', '.join(map(repr, unknown))}: allowed "
                f"{', '.join(allowed)}"
            )
        values = dict(values)
        if isinstance(values.get("classes"), (str, int)):
            values["classes"] = [values["classes"]]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def bad(key: str, allowed: str) -> ValueError:
            return ValueError(f"data.{key}={getattr(self, key)!r}: allowed {allowed}")

        spec = find_dataset(self.name)
        if spec is None:
            raise bad("name", ", ".join(DATASET_NAMES))
        self.name = spec.name
        if self.split not in SPLITS:
            raise bad("split", ", ".join(SPLITS))
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise bad("on_bad_image", ", ".join(ON_BAD_IMAGE))
        if self.toy not in TOY2D_NAMES:
            raise bad("toy", ", ".join(TOY2D_NAMES))
        if self.captions not in CAPTION_SETS:
            raise bad("captions", ", ".join(CAPTION_SETS))
        if self.captions == "attributes" and self.name not in ATTRIBUTE_CAPTIONED:
            raise ValueError(
                f"data.captions = 'attributes' applies to {', '.join(ATTRIBUTE_CAPTIONED)} "
                f"only (tone and pattern measured from its pixels); for {self.name} allowed: "
                "'default'"
            )
        if self.channels is not None and (
            isinstance(self.channels, bool) or self.channels not in (1, 3)
        ):
            raise bad("channels", "1 (grey), 3 (RGB) or unset")
        for key in ("image_size", "limit"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad(key, "a positive integer or unset")
            if value is not None and value < 1:
                raise bad(key, "a positive integer or unset")
        for key in ("num_samples", "seed"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(key, "a non-negative integer")
        for key in ("hflip", "folder_labels", "download"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        if self.classes is not None and (
            isinstance(self.classes, (str, int)) or not isinstance(self.classes, Sequence)
        ):
            raise bad("classes", "a list of class names or indices")
        if self.classes is not None and not self.classes:
            raise ValueError("data.classes is empty; leave it unset to keep every class")
        if self.classes is not None and spec.class_names is not None:
            # The lookup evaluation makes (catalog.DatasetSpec.class_index): a name that
            # trains also scores.
            for c in self.classes:
                try:
                    spec.class_index(c)
                except ValueError as e:
                    raise ValueError(f"data.classes: {e}") from None
        if self.name in ("image_folder", "hf") and not self.root:
            raise ValueError(f"data.name={self.name!r} needs data.root, the folder to read")
        if self.name == "digits" and self.root is not None:
            raise ValueError("data.root does not apply to digits (they ship in scikit-learn)")
        if self.name == "toy2d":
            for key in ("image_size", "channels"):
                if getattr(self, key) is not None:
                    raise ValueError(f"data.{key} does not apply to toy2d (2-D points)")
            if self.hflip:
                raise ValueError("data.hflip does not apply to toy2d (2-D points)")
        if self.name == "shapes":
            self._validate_shapes()
        elif self.places:
            raise ValueError(
                f"data.places does not apply to {self.name}: it words shapes captions; "
                "leave it at 0"
            )
        elif self.relations:
            raise ValueError(
                f"data.relations does not apply to {self.name}: it lays out shapes scenes; "
                "leave it at 0"
            )

    def _validate_shapes(self) -> None:
        """shapes renders its own RGB scenes, captioned per image (docs/shapes.md)."""
        if self.hflip:
            raise ValueError(
                "data.hflip does not apply to shapes: a flip swaps left and right, and the "
                "captions ('a circle to the left of a square') would lie; set hflip = false"
            )
        if self.channels not in (None, 3):
            raise ValueError(
                f"data.channels={self.channels!r} does not apply to shapes: its colours are "
                "its content; leave channels unset (3, RGB)"
            )
        if self.classes is not None:
            raise ValueError(
                "data.classes does not apply to shapes: its labels are image indices, not "
                "classes; leave classes unset"
            )
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(
                f"data.image_size={self.image_size} is too small for shapes: allowed 16 or "
                "more (scenes are laid out on 32x32 and rendered at any size), or unset"
            )
        if self.root is not None:
            raise ValueError("data.root does not apply to shapes (they are drawn from the seed)")
        if self.num_samples < 1:
            raise ValueError("data.num_samples must be at least 1 for shapes (scenes drawn)")
        if isinstance(self.relations, bool) or not 0.0 <= self.relations <= 1.0:
            raise ValueError(
                f"data.relations={self.relations!r} is not a share: allowed 0 to 1 (of the "
                "two-phrase scenes laid out to show a relation)"
            )
        if isinstance(self.places, bool) or not 0.0 <= self.places <= 1.0:
            raise ValueError(
                f"data.places={self.places!r} is not a share: allowed 0 to 1 (of the "
                "captions that say where a phrase stands)"
            )


def class_aliases(dataset: str, class_names: Sequence[str] | None) -> Mapping[str, int] | None:
    """Extra names for a dataset's classes ('sneakers', 'seven'), when its classes are the
    standard ones (a `data.classes` subset renumbers them, and then only names are taken)."""
    spec = find_dataset(dataset)
    if spec is None or class_names is None or tuple(class_names) != spec.class_names:
        return None
    return spec.class_aliases


def _shapes_reader(data: Mapping[str, Any]) -> Callable[[str], object]:
    """parse_prompt, refusing places ("on the left") when the run's captions had none."""
    if data.get("places", 0.0):
        return parse_prompt

    def read(prompt: str) -> object:
        spec = parse_prompt(prompt)
        placed = [g for g in spec.groups if g.place is not None]
        if placed:
            raise ValueError(
                f"prompt {quote_prompt(prompt)} says where a {placed[0].shape} stands in the "
                f"picture ('{PLACE_WORDS[placed[0].place][0]}'), and this model was trained "
                "without such captions (data.places = 0); it reads relations between objects "
                "('a red circle left of a blue square')"
            )
        return spec

    return read


# Datasets whose captions come from a grammar that can read prompts back (shapes: objects,
# counts, colours, sizes, places and relations; data/shapes_grammar.py). A prompt the grammar
# cannot read names something the dataset's world does not hold, or words it was never
# captioned in. Each entry builds the reader from the run's [data] settings.
_PROMPT_READERS: Mapping[str, Callable[[Mapping[str, Any]], Callable[[str], object]]] = {
    "shapes": _shapes_reader
}


def prompt_reader(
    dataset: str, data: Mapping[str, Any] | None = None
) -> Callable[[str], object] | None:
    """The parser of prompts in a dataset's caption language, which raises ValueError (saying
    what it cannot read and what the language has) for a prompt outside it; None when the
    dataset's captions have no grammar. ``data``: the run's [data] settings, which say what
    the captions were written with (shapes: data.places)."""
    spec = find_dataset(dataset)
    build = _PROMPT_READERS.get(spec.name) if spec is not None else None
    return None if build is None else build(data or {})


def _select_classes(
    labels: torch.Tensor | None,
    class_names: tuple[str, ...] | None,
    wanted: Sequence[str | int],
    aliases: Mapping[str, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Mask of kept samples, their new labels 0..k-1 (in the order asked), new names."""
    if labels is None or class_names is None:
        raise ValueError(
            "data.classes needs a labelled dataset (image_folder: set folder_labels=true; "
            "hf: set label_column)"
        )
    chosen = list(dict.fromkeys(resolve_class(c, class_names, aliases) for c in wanted))
    remap = torch.full((len(class_names),), -1, dtype=torch.int64)
    remap[chosen] = torch.arange(len(chosen))
    new = remap[labels]
    keep = new >= 0
    return keep, new[keep], tuple(class_names[i] for i in chosen)


def _take(
    data: ImageData | PointData,
    index: torch.Tensor | slice,
    labels: torch.Tensor | None = None,
    names: tuple[str, ...] | None = None,
) -> ImageData | PointData:
    """The samples at `index`, with new labels / class names when given."""
    labels = labels if labels is not None else (None if data.labels is None else data.labels[index])
    names = names if names is not None else data.class_names
    if isinstance(data, ImageData):
        return ImageData(data.images[index], labels, names, data.name, data.notes)
    return PointData(data.points[index], labels, names, data.name, data.mixture)


# The sources read as (uint8 images (N, 1, H, W), int64 labels) arrays at their native size
# (28x28 or 8x8 grey); load_dataset resizes and converts them.
_NATIVE_LOADERS: dict[str, Callable[[DataConfig], tuple[np.ndarray, np.ndarray]]] = {
    "fashion_mnist": lambda cfg: fashion_mnist.load_fashion_mnist(
        cfg.split, cfg.root, cfg.download
    ),
    "mnist": lambda cfg: mnist.load_mnist(cfg.split, cfg.root),
    "digits": lambda cfg: digits.load_digits(cfg.split),
}


def _load_source(cfg: DataConfig) -> ImageData | PointData:
    """The dataset as its source gives it; MNIST-likes at their native size, shapes at
    data.image_size (rendered at that size, not resized)."""
    if cfg.name == "toy2d":
        return make_toy2d(cfg.toy, cfg.num_samples, cfg.seed)
    if cfg.name == "shapes":
        size = cfg.image_size or SHAPES_IMAGE_SIZE
        return load_shapes(
            cfg.split, cfg.num_samples, cfg.seed, size, cfg.relations, cfg.places
        )
    if cfg.name == "image_folder":
        if cfg.split != "train":
            raise ValueError(
                "an image folder has no splits: point data.root at the folder to read and "
                "leave data.split as 'train'"
            )
        return load_image_folder(
            cfg.root,  # type: ignore[arg-type]  (validate() checked it is set)
            image_size=cfg.image_size,
            channels=cfg.channels,
            folder_labels=cfg.folder_labels,
            on_bad_image=cfg.on_bad_image,
            keep_classes=cfg.classes,
        )
    if cfg.name == "hf":
        return load_hf_dataset(
            cfg.root,  # type: ignore[arg-type]
            split=cfg.split,
            image_column=cfg.image_column,
            label_column=cfg.label_column,
            image_size=cfg.image_size,
            channels=cfg.channels,
            on_bad_image=cfg.on_bad_image,
        )
    images, labels = _NATIVE_LOADERS[cfg.name](cfg)
    return ImageData(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        dataset_spec(cfg.name).class_names,
        f"{cfg.name}/{cfg.split}",
    )


def _attribute_groups(data: ImageData) -> ImageData:
    """The same images labelled by their (class, tone, pattern) group, measured at the native
    28x28 (before any resize); a ``data.classes`` subset is mapped back to the standard
    labels first, since groups are keyed by them."""
    spec = dataset_spec("fashion_mnist")
    standard = torch.tensor(spec.class_indices(data.class_names or ()))
    labels = group_labels(standard[data.labels], data.images)
    return ImageData(data.images, labels, None, data.name)


def load_dataset(cfg: DataConfig) -> ImageData | PointData:
    """Load the whole dataset `cfg` describes into memory.

    Images come back as ImageData (uint8 (N, C, H, W)), toy2d as PointData (float (N, 2)).
    Order of work: load, keep `classes`, keep the first `limit`, label attribute groups
    (data.captions = "attributes"), then (MNIST-likes) resize and convert channels, so that
    no time goes into samples thrown away.
    """
    cfg.validate()
    data = _load_source(cfg)
    if cfg.classes is not None:
        aliases = dataset_spec(cfg.name).class_aliases or None
        keep, labels, names = _select_classes(data.labels, data.class_names, cfg.classes, aliases)
        data = _take(data, keep, labels, names)
    if cfg.limit is not None:
        data = _take(data, slice(0, cfg.limit))
    if len(data) == 0:
        raise ValueError(f"{data.name}: no samples left after selecting classes {cfg.classes}")
    if cfg.captions == "attributes":
        data = _attribute_groups(data)
    if cfg.name in _NATIVE_LOADERS and (cfg.image_size is not None or cfg.channels is not None):
        images = data.images.numpy()
        if cfg.image_size is not None:
            images = resize_images(images, cfg.image_size)
        if cfg.channels is not None:
            images = convert_channels(images, cfg.channels)
        data = ImageData(torch.from_numpy(images), data.labels, data.class_names, data.name)
    return data


def dataset_caption_table(cfg: DataConfig, class_names: Sequence[str] | None = None
                          ) -> CaptionTable:
    """The training captions of the data `cfg` loads, indexed by its labels: per class
    (captions.caption_table, for the classes `class_names` of the loaded data) or per image
    (shapes: the captions of image i under label i, from the same split, count and seed) or
    per attribute group (data.captions = "attributes": label i is fashion_attributes.GROUPS[i]).
    ValueError for a dataset without captions. One function, so that text-to-image training
    and what reads its captions back need not know which kind a dataset has."""
    if cfg.captions == "attributes":
        return attribute_caption_table()
    spec = dataset_spec(cfg.name)
    if spec.image_captions:
        return shapes_caption_table(
            cfg.split, cfg.num_samples, cfg.seed, cfg.relations, cfg.places
        )
    return caption_table(cfg.name, class_names)
