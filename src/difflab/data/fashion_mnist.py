"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist):
60,000 training and 10,000 test greyscale 28x28 images of 10 clothing classes.

Sources, in order:
1. `root=`, a directory of the four IDX files (gzipped or not). When given, it is the only
   source tried, so a typo is an error rather than a silent fall-back.
2. The Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).
3. Earlier downloads in the cache (~/.cache/difflab/fashion-mnist).
4. A download from the dataset's public URLs, checked against the published MD5s.

Checksums. The README publishes MD5s of the .gz files (GZ_MD5); downloads are checked
against those. Debian rewrites the 10-byte gzip header of its copies (strip-nondeterminism:
file name dropped, time stamp set to the package date), so their .gz MD5s differ while the
compressed stream, and so the content, is the same byte for byte. Every source is therefore
checked on the decompressed bytes (RAW_MD5, computed from the official files), which do not
depend on how a file was compressed.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .base import ChecksumError, DatasetNotFoundError, default_cache_dir, md5_hex
from .catalog import dataset_spec
from .idx import IDXFormatError, find_idx_file, parse_idx, read_idx_bytes

# The class names and their aliases are in catalog.py, with every other dataset's.
_SPEC = dataset_spec("fashion_mnist")

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 of the official .gz files, from the dataset's README.
GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}

# MD5 of the same files decompressed.
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

DOWNLOAD_TIMEOUT_S = 30.0


def class_index(name_or_int: str | int) -> int:
    """Index of a Fashion-MNIST class from its index, name or alias ("sneaker" -> 7).

    Raises ValueError listing the allowed names.
    """
    return _SPEC.class_index(name_or_int)


def _has_split(directory: Path, split: str) -> bool:
    return all(find_idx_file(directory, stem) is not None for stem in FILES[split])


def _download(stem: str, directory: Path, timeout: float) -> list[str]:
    """Fetch `stem`.gz into `directory` from the first mirror that serves the published
    bytes. Returns the failures (empty on success)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}.gz"
    failures = []
    for mirror in MIRRORS:
        url = mirror + f"{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            failures.append(f"{url}: {e}")
            continue
        digest = md5_hex(payload)
        if digest != GZ_MD5[stem]:
            failures.append(f"{url}: MD5 {digest}, expected {GZ_MD5[stem]}")
            continue
        # Write to a temporary name and rename, so an interrupted download never leaves a
        # file that looks complete.
        partial = target.with_name(f"{target.name}.part{os.getpid()}")
        partial.write_bytes(payload)
        partial.replace(target)
        return []
    return failures


def find_fashion_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a directory holding the IDX files of `split`, downloading them if needed."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split {split!r}: allowed 'train', 'test'")
    needed = ", ".join(f"{stem}[.gz]" for stem in FILES[split])
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(f"Fashion-MNIST root {root} is not a directory")
        if not _has_split(root, split):
            raise DatasetNotFoundError(f"Fashion-MNIST root {root} lacks {needed}")
        return root
    if _has_split(DEBIAN_DIR, split):
        return DEBIAN_DIR
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache = cache / "fashion-mnist"
    if _has_split(cache, split):
        return cache
    failures = []
    if download:
        for stem in FILES[split]:
            if find_idx_file(cache, stem) is None:
                failures += _download(stem, cache, DOWNLOAD_TIMEOUT_S)
        if _has_split(cache, split):
            return cache
    tried = f"looked in {DEBIAN_DIR} and {cache}"
    tried += "; download failed:\n  " + "\n  ".join(failures) if failures else ""
    tried += "" if download else "; downloading is off"
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split} files not found ({needed}): {tried}.\n"
        f"Install them with `apt-get install dataset-fashion-mnist`, or pass root= a "
        f"directory holding the IDX files."
    )


def load_fashion_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a split as (images uint8 (N, 1, 28, 28), labels int64 (N,)).

    verify=True checks each file's decompressed MD5 against the official one and raises
    ChecksumError naming the file when it differs (pass verify=False to read a modified
    copy on purpose).
    """
    directory = find_fashion_mnist(split, root, download, cache_dir)
    arrays = []
    for stem, ndim in zip(FILES[split], (3, 1), strict=True):
        path = find_idx_file(directory, stem)
        assert path is not None  # find_fashion_mnist checked
        data = read_idx_bytes(path)
        if verify and (digest := md5_hex(data)) != RAW_MD5[stem]:
            raise ChecksumError(
                f"{path}: content MD5 {digest} is not the official Fashion-MNIST "
                f"{RAW_MD5[stem]} (file modified or corrupt; pass verify=False to use it "
                f"anyway)"
            )
        array = parse_idx(data, path)
        if array.ndim != ndim:
            raise IDXFormatError(f"{path}: expected a {ndim}-D IDX file, found {array.shape}")
        arrays.append(array)
    images, labels = arrays
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{directory}: {len(images)} images but {len(labels)} labels in split {split!r}"
        )
    if labels.size and labels.max() >= len(_SPEC.class_names or ()):
        raise IDXFormatError(f"{directory}: label {labels.max()} outside 0..9")
    return images[:, None], labels.astype(np.int64)
