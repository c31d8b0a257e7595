"""The one table of the datasets difflab knows by name, which every other place reads.

Each entry says what a dataset is called (and any other spelling of that name), its classes in
label order, the other spellings of each class ("seven" for "7", "sneakers" for "Sneaker"),
whether it has captions for text-to-image training (per class, or per image as the synthetic
shapes), and which feature network scores its samples. Training (DataConfig, load_dataset),
captions (captions.py) and evaluation (metrics.features) all read these entries, so a class
name a run is configured with resolves to the same class when its FID is computed: before
this table there were three, and an MNIST run with ``data.classes = ["seven"]`` trained,
then failed at its first FID.

    spec = dataset_spec("mnist")
    spec.class_index("seven")        # 7: by index, name or alias, case-insensitive
    spec.captions, spec.features     # "digits" (caption_text/digits.toml), "mnist"

Only names live here; how each dataset is loaded is in registry.py, its caption words in
caption_text/*.toml, and its feature network's recipe in difflab.metrics.features (floor 1,
which reads this table; this floor cannot import it).

References: Xiao, Rasul & Vollgraf (2017), "Fashion-MNIST" (its ten classes); LeCun et al.
(1998), MNIST; scikit-learn's 8x8 digits (UCI "Optical Recognition of Handwritten Digits").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .base import resolve_class


@dataclass(frozen=True)
class DatasetSpec:
    """What difflab knows about one dataset by name (module docstring)."""

    name: str  # the name configs use: data.name
    aliases: tuple[str, ...] = ()  # other accepted spellings of `name`
    class_names: tuple[str, ...] | None = None  # class_names[label]; None: not fixed in advance
    # Other spellings of class names -> label (matched case-insensitively, "_" as space); the
    # names in class_names are always accepted too.
    class_aliases: Mapping[str, int] = field(default_factory=dict)
    captions: str | None = None  # caption words file caption_text/<captions>.toml, or None
    # Each image has captions of its own, made by its loader (shapes: written from the scene
    # it renders), and its label is the image's index into them, not a class.
    image_captions: bool = False
    features: str | None = None  # key of difflab.metrics.features.RECIPES, or None

    def __post_init__(self) -> None:
        # Read-only, so that no caller can change the table for everyone else.
        object.__setattr__(self, "class_aliases", MappingProxyType(dict(self.class_aliases)))
        n = len(self.class_names or ())
        bad = {a: i for a, i in self.class_aliases.items() if not 0 <= i < n}
        if bad:
            raise ValueError(f"dataset {self.name!r}: class aliases {bad} name no class")
        if self.image_captions and (self.captions or self.class_names is not None):
            raise ValueError(f"dataset {self.name!r}: per-image captions come without classes")
        if (self.captions or self.features) and self.class_names is None:
            # Captions are per class, and a feature network is a classifier of its classes.
            raise ValueError(f"dataset {self.name!r}: captions and features need fixed classes")

    def class_index(self, name_or_int: str | int) -> int:
        """The label of a class given by index, name or alias (base.resolve_class); ValueError
        with the allowed names when there is none, or when the classes are not fixed."""
        if self.class_names is None:
            raise ValueError(f"{self.name} has no fixed classes to look {name_or_int!r} up in")
        return resolve_class(name_or_int, self.class_names, self.class_aliases)

    def class_indices(self, classes: Sequence[str | int]) -> list[int]:
        """The label of each of `classes`, in the order given (see :meth:`class_index`)."""
        return [self.class_index(c) for c in classes]


_FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_ALIASES = {
    "t-shirt": 0,
    "tshirt": 0,
    "t shirt": 0,
    "tee": 0,
    "top": 0,
    "trousers": 1,
    "pants": 1,
    "sweater": 2,
    "jumper": 2,
    "jacket": 4,
    "sandals": 5,
    "sneakers": 7,
    "trainer": 7,
    "shoe": 7,
    "handbag": 8,
    "boot": 9,
    "boots": 9,
    "ankle boots": 9,
}
_DIGIT_CLASSES = tuple(str(d) for d in range(10))
# Digits by word, so `--class seven` works as well as `--class 7`.
_DIGIT_ALIASES = {
    w: i
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    )
}

CATALOG: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "fashion_mnist",
        class_names=_FASHION_MNIST_CLASSES,
        class_aliases=_FASHION_MNIST_ALIASES,
        captions="fashion_mnist",
        features="fashion_mnist",
    ),
    DatasetSpec(
        "mnist",
        class_names=_DIGIT_CLASSES,
        class_aliases=_DIGIT_ALIASES,
        captions="digits",
        features="mnist",
    ),
    # scikit-learn's 8x8 digits are the same ten classes, so the same names and captions.
    DatasetSpec(
        "digits",
        class_names=_DIGIT_CLASSES,
        class_aliases=_DIGIT_ALIASES,
        captions="digits",
        features="digits",
    ),
    DatasetSpec("image_folder"),  # classes: sub-folder names, when data.folder_labels is set
    DatasetSpec("hf"),  # classes: the label column's names, when data.label_column is set
    DatasetSpec("toy2d"),  # 2-D points; labels are mixture components
    # Synthetic scenes of coloured shapes (data/shapes.py, docs/shapes.md): labels are image
    # indices, and each image's captions are written from its scene.
    DatasetSpec("shapes", image_captions=True),
)

DATASET_NAMES = tuple(spec.name for spec in CATALOG)
CAPTIONED_DATASETS = tuple(spec.name for spec in CATALOG if spec.captions)  # per class
IMAGE_CAPTIONED_DATASETS = tuple(spec.name for spec in CATALOG if spec.image_captions)
FEATURE_DATASETS = tuple(spec.name for spec in CATALOG if spec.features)

_BY_NAME = {n: spec for spec in CATALOG for n in (spec.name, *spec.aliases)}


def find_dataset(name: str) -> DatasetSpec | None:
    """The entry of a dataset by name or alias, or None when there is none."""
    return _BY_NAME.get(name) if isinstance(name, str) else None


def dataset_spec(name: str) -> DatasetSpec:
    """The entry of a dataset by name or alias; ValueError listing the names otherwise."""
    spec = find_dataset(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}: allowed {', '.join(DATASET_NAMES)}")
    return spec
