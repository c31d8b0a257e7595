"""scikit-learn's 8x8 handwritten digits (UCI "Optical Recognition of Handwritten Digits"):
1,797 images, 16 grey levels (0..16), classes "0".."9" (named in catalog.py). Tiny enough
for learning tests that train in seconds. There is no official train/test split; "train" is
all 1,797 images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .base import DatasetNotFoundError


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load as (images uint8 (1797, 1, 8, 8) scaled from 0..16 to 0..255, labels int64)."""
    if split != "train":
        raise ValueError(
            f"digits split {split!r}: scikit-learn's digits have no test split; allowed "
            f"'train' (all 1,797 images)"
        )
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DatasetNotFoundError(
            "the 8x8 digits need scikit-learn (pip install 'difflab[mnist]' or pip install "
            "scikit-learn)"
        )
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        # The file load_digits() reads (64 pixels then the label per row), read without
        # importing scikit-learn, which takes seconds.
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
        pixels, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits as sklearn_load_digits

        bunch = sklearn_load_digits()
        pixels, labels = bunch.images, bunch.target
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)  # 16 -> 255 exactly
    return images[:, None], np.asarray(labels, dtype=np.int64)
