"""difflab.data: datasets held in memory as uint8 images (N, C, H, W), and their batches.

    from difflab.data import DataConfig, load_dataset, BatchIterator
    data = load_dataset(DataConfig(name="fashion_mnist", image_size=32))
    batches = BatchIterator(data, batch_size=128, hflip=True, seed=0)
    for images, labels in batches:  # float [-1, 1] (B, 1, 32, 32), int64 (B,)
        ...

Sources: fashion_mnist, mnist, digits, image_folder, hf (Hugging Face, optional), toy2d.
"""

from .base import (
    ChecksumError,
    DatasetNotFoundError,
    ImageData,
    PointData,
    default_cache_dir,
    resolve_class,
)
from .fashion_mnist import CLASS_ALIASES, CLASS_NAMES, class_index, load_fashion_mnist
from .idx import IDXFormatError, read_idx
from .image_folder import (
    IMAGE_EXTENSIONS,
    BadImageError,
    BadImageWarning,
    list_images,
    load_image_folder,
)
from .loader import Batch, BatchIterator, ImageDataset, epoch_flips, epoch_permutation
from .registry import DATASET_NAMES, DataConfig, check_image_size, class_aliases, load_dataset
from .toy2d import (
    TOY2D_NAMES,
    GaussianMixture,
    grid_mixture,
    make_toy2d,
    ring_mixture,
)
from .transforms import to_float, to_uint8

__all__ = [
    "CLASS_ALIASES",
    "CLASS_NAMES",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "TOY2D_NAMES",
    "BadImageError",
    "BadImageWarning",
    "Batch",
    "BatchIterator",
    "ChecksumError",
    "DataConfig",
    "DatasetNotFoundError",
    "GaussianMixture",
    "IDXFormatError",
    "ImageData",
    "ImageDataset",
    "PointData",
    "check_image_size",
    "class_aliases",
    "class_index",
    "default_cache_dir",
    "epoch_flips",
    "epoch_permutation",
    "grid_mixture",
    "list_images",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "make_toy2d",
    "read_idx",
    "resolve_class",
    "ring_mixture",
    "to_float",
    "to_uint8",
]
