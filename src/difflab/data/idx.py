"""Read IDX files, the format of MNIST and Fashion-MNIST, gzipped or not.

Format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): two zero bytes, a type code
(0x08 = unsigned byte), the number of dimensions, then each dimension as a big-endian
uint32, then the data in C order. Only unsigned-byte files are read here; that is what
every MNIST-like dataset ships.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_TYPE_NAMES = {
    0x08: "ubyte",
    0x09: "sbyte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}


class IDXFormatError(ValueError):
    """An IDX file is truncated, corrupt or of an unsupported type."""


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """Return the raw (decompressed) bytes of an IDX file. Gzip is detected by content."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({e})") from e
    return data


def parse_idx(data: bytes, source: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array; `source` names it in errors."""
    if len(data) < 4:
        raise IDXFormatError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(
            f"{source}: not an IDX file (magic number starts {data[:4].hex()}, "
            f"expected 0000 then type and rank)"
        )
    type_code, ndim = data[2], data[3]
    if type_code != 0x08:
        kind = _TYPE_NAMES.get(type_code, f"unknown type 0x{type_code:02x}")
        raise IDXFormatError(f"{source}: IDX data type {kind}; only unsigned bytes (0x08)")
    if not 1 <= ndim <= 4:
        raise IDXFormatError(f"{source}: IDX rank {ndim}; expected 1 to 4 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{source}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(data) - header
    if got != expected:
        raise IDXFormatError(
            f"{source}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {got} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a uint8 array.

    ndim, if given, is checked (3 for image files, 1 for label files).
    """
    path = Path(path)
    array = parse_idx(read_idx_bytes(path), path)
    if ndim is not None and array.ndim != ndim:
        raise IDXFormatError(
            f"{path}: expected a {ndim}-D IDX file, found {array.ndim}-D of shape {array.shape}"
        )
    return array


def find_idx_file(directory: str | os.PathLike, stem: str) -> Path | None:
    """Find `stem` in `directory` as shipped (`stem`, `stem.gz`) or as some mirrors
    rename it (`train-images.idx3-ubyte`). Returns None when absent."""
    directory = Path(directory)
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def load_idx_pair(
    directory: str | os.PathLike, images_stem: str, labels_stem: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read an (images, labels) pair from a directory and check they agree in length."""
    directory = Path(directory)
    paths = []
    for stem in (images_stem, labels_stem):
        path = find_idx_file(directory, stem)
        if path is None:
            raise FileNotFoundError(
                f"{directory}: no {stem} or {stem}.gz (needed: {images_stem}[.gz] and "
                f"{labels_stem}[.gz])"
            )
        paths.append(path)
    images = read_idx(paths[0], ndim=3)
    labels = read_idx(paths[1], ndim=1)
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels"
        )
    return images, labels
