"""difflab.data: datasets held in memory as uint8 images (N, C, H, W), and their batches.

    from difflab.data import DataConfig, load_dataset, BatchIterator
    data = load_dataset(DataConfig(name="fashion_mnist", image_size=32))
    batches = BatchIterator(data, batch_size=128, hflip=True, seed=0)
    for images, labels in batches:  # float [-1, 1] (B, 1, 32, 32), int64 (B,)
        ...

Sources: fashion_mnist, mnist, digits, image_folder, hf (Hugging Face, optional), toy2d; what
each is called and its classes are in one table, catalog.py (`dataset_spec("mnist")`).
Fashion-MNIST images also have captions of their tone and pattern, measured from their pixels
(fashion_attributes.py; `data.captions = "attributes"`).
"""

from .base import (
    ChecksumError,
    DatasetNotFoundError,
    ImageData,
    PointData,
    default_cache_dir,
    names_every_class,
    resolve_class,
)
from .catalog import (
    CAPTIONED_DATASETS,
    CATALOG,
    DATASET_NAMES,
    FEATURE_DATASETS,
    DatasetSpec,
    dataset_spec,
    find_dataset,
)
from .fashion_mnist import class_index, load_fashion_mnist
from .idx import IDXFormatError, read_idx
from .image_folder import (
    IMAGE_EXTENSIONS,
    BadImageError,
    BadImageWarning,
    list_images,
    load_image_folder,
)
from .loader import Batch, BatchIterator, ImageDataset, epoch_flips, epoch_permutation
from .registry import DataConfig, class_aliases, load_dataset, prompt_reader
from .toy2d import (
    TOY2D_NAMES,
    GaussianMixture,
    grid_mixture,
    make_toy2d,
    ring_mixture,
)
from .transforms import to_float, to_uint8

# Fashion-MNIST's classes, as this package has always exported them; every dataset's are in
# CATALOG (dataset_spec(name).class_names, .class_aliases).
CLASS_NAMES = dataset_spec("fashion_mnist").class_names
CLASS_ALIASES = dataset_spec("fashion_mnist").class_aliases

__all__ = [
    "CAPTIONED_DATASETS",
    "CATALOG",
    "CLASS_ALIASES",
    "CLASS_NAMES",
    "DATASET_NAMES",
    "FEATURE_DATASETS",
    "IMAGE_EXTENSIONS",
    "TOY2D_NAMES",
    "BadImageError",
    "BadImageWarning",
    "Batch",
    "BatchIterator",
    "ChecksumError",
    "DataConfig",
    "DatasetNotFoundError",
    "DatasetSpec",
    "GaussianMixture",
    "IDXFormatError",
    "ImageData",
    "ImageDataset",
    "PointData",
    "class_aliases",
    "prompt_reader",
    "class_index",
    "dataset_spec",
    "default_cache_dir",
    "epoch_flips",
    "epoch_permutation",
    "find_dataset",
    "grid_mixture",
    "list_images",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "make_toy2d",
    "read_idx",
    "names_every_class",
    "resolve_class",
    "ring_mixture",
    "to_float",
    "to_uint8",
]
