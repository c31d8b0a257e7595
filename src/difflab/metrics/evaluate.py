"""Evaluate generated images against a dataset's real images.

    from difflab.metrics import evaluate_images
    report = evaluate_images(images, "fashion_mnist")          # uint8 (N, 1, 28, 28)

(Sampling a checkpoint and scoring it is difflab.evaluation, a floor above the pipeline.)

Every report holds FID, KID (mean, spread, standard error), precision and recall (k = 3), the
classes a classifier sees in the samples, the agreement with the requested classes for
conditional models, and, on request, the test-set negative log-likelihood in bits per dimension;
plus `feature_space`, the name of the space the figures were computed in (features.py): they
are not Inception figures and cannot be compared with those.

The reference set is the dataset's metric test split (features.metric_split) unless told
otherwise. Images of another size than the dataset's are resized to it for the feature net, and
the reference images make the same round trip, so that resizing itself costs nothing.

"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.data import resolve_class
from difflab.data.transforms import convert_channels, resize_images
from difflab.diffusion.schedules import describe_karras_grid

from .features import (
    CLASS_ALIASES,
    CLASS_NAMES,
    DATASETS,
    FeatureNet,
    feature_extractor,
    metric_split,
)
from .fid import GaussianStats, fid_from_stats
from .kid import kid_from_features
from .prd import class_agreement, precision_recall

REFERENCE_SPLITS = ("test", "train")


# ---------------------------------------------------------------------------- input images
def as_uint8_images(images: Any, name: str = "images") -> torch.Tensor:
    """Validate images and return them as a uint8 tensor (N, C, H, W), C in {1, 3}.

    Accepts (N, H, W), (N, C, H, W) or (N, H, W, C) arrays or tensors of uint8, or of another
    integer type holding 0..255. Floats are refused: their range (0..1? -1..1?) is a guess.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(
            f"{name} must be uint8 pixels 0..255, got {x.dtype}; convert first, e.g. "
            "difflab.data.to_uint8(x) for floats in [-1, 1] or (x * 255).round() for [0, 1]"
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, "
            f"got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if x.dtype != torch.uint8:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name} of type {x.dtype} hold {lo}..{hi}; pixels must be 0..255")
        x = x.to(torch.uint8)
    return x.contiguous()


def load_images_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images uint8 (N, C, H, W), labels int64 (N,) or None) from an .npz holding `images`
    (and optionally `labels`, e.g. from `difflab sample --out FILE.npz`), or an .npy array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a NumPy .npz/.npy file of plain arrays ({e})") from None
    if isinstance(data, np.ndarray):
        return as_uint8_images(data, f"{path.name}"), None
    with data:
        keys = list(data.keys())
        if "images" in keys:
            key = "images"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise ValueError(
                f"{path} holds arrays {', '.join(keys)}; name the images 'images' (and the "
                "class labels, if any, 'labels')"
            )
        images = as_uint8_images(data[key], f"{path.name}[{key!r}]")
        labels = None
        if "labels" in keys:
            raw = np.asarray(data["labels"])
            # integers only: names ('shirt'), booleans and floats are not class indices, and
            # torch would refuse some of them with its own error, not this one
            if raw.dtype.kind not in "iu" or raw.shape != (len(images),):
                raise ValueError(
                    f"{path.name}['labels'] must be {len(images)} integer class indices, got "
                    f"{raw.dtype} with shape {raw.shape}"
                )
            labels = torch.as_tensor(raw).long()
    return images, labels


def _to_native(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the feature net's (C', H', W'): grey via luma, resized (PIL)."""
    c, h, _ = shape
    x = images.numpy()
    if x.shape[2] != x.shape[3]:
        raise ValueError(
            f"images must be square to be resized to {h}x{h}, got {x.shape[2]}x{x.shape[3]}"
        )
    x = convert_channels(x, c)
    return torch.from_numpy(np.ascontiguousarray(resize_images(x, h)))


# ---------------------------------------------------------------------------- reference
_REFERENCE: dict[tuple, tuple[np.ndarray, int]] = {}


def _class_indices(dataset: str, classes: Sequence[str | int] | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    names, aliases = CLASS_NAMES[dataset], CLASS_ALIASES[dataset]
    return tuple(sorted({resolve_class(c, names, aliases) for c in classes}))


def reference_features(
    net: FeatureNet,
    split: str = "test",
    *,
    n_reference: int | None = None,
    classes: tuple[int, ...] | None = None,
    round_trip: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Features of the real images of `split`: only `classes` (dataset indices) when given,
    a seeded random n_reference of them when given, and when round_trip=(C, H, W) after a
    trip to that shape and back. Remembered for the life of the process."""
    if split not in REFERENCE_SPLITS:
        raise ValueError(f"reference split {split!r}: allowed {', '.join(REFERENCE_SPLITS)}")
    key = (net.dataset, id(net), split, n_reference, classes, round_trip, seed)
    if key not in _REFERENCE:
        data = metric_split(net.dataset, split)
        images, labels = data.images, data.labels
        if classes is not None:
            keep = torch.isin(labels, torch.tensor(classes))
            images, labels = images[keep], labels[keep]
        if n_reference is not None and n_reference < len(images):
            g = torch.Generator().manual_seed(seed)
            images = images[torch.randperm(len(images), generator=g)[:n_reference].sort().values]
        if round_trip is not None and tuple(round_trip) != net.recipe.image_shape:
            c, h, _ = round_trip
            there = resize_images(convert_channels(images.numpy(), c), h)
            images = _to_native(torch.from_numpy(there), net.recipe.image_shape)
        _REFERENCE[key] = (net.features(images), len(images))
    return _REFERENCE[key][0]


# ---------------------------------------------------------------------------- metrics
def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(f"difflab: {message}", file=sys.stderr, flush=True)


def evaluate_images(
    images: Any,
    dataset: str,
    labels: Any = None,
    *,
    reference_split: str = "test",
    n_reference: int | None = None,
    classes: Sequence[str | int] | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Compare generated images with the real images of `dataset` (module docstring).

    images: uint8 (N, C, H, W), (N, H, W) or (N, H, W, C), any square size (resized to the
    dataset's). labels: the class each image was asked to be (dataset class indices) for
    conditional models, or None. reference_split: "test" or "train" (features.metric_split);
    n_reference: a seeded random subset of it. classes: restrict the reference to these classes
    (names or indices), for models trained on a subset. kid_subset_size / kid_subsets: KID's
    blocks (kid.kid_from_features); pr_k: the neighbour of precision / recall; seed: every
    random choice.
    """
    if dataset not in DATASETS:
        raise ValueError(
            f"no feature network for dataset {dataset!r}: the metrics support {', '.join(DATASETS)}"
        )
    if n_reference is not None and n_reference < 2:
        raise ValueError(f"n_reference must be at least 2, got {n_reference}")
    if reference_split not in REFERENCE_SPLITS:
        raise ValueError(
            f"reference split {reference_split!r}: allowed {', '.join(REFERENCE_SPLITS)}"
        )
    x = as_uint8_images(images)
    if len(x) < 4:
        raise ValueError(f"need at least 4 images to compare distributions, got {len(x)}")
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if y.is_floating_point() or y.shape != (len(x),):
            raise ValueError(
                f"labels must be {len(x)} integer class indices, got {y.dtype} with shape "
                f"{tuple(y.shape)}"
            )
    class_idx = _class_indices(dataset, classes)
    net = feature_extractor(dataset, verbose=verbose)
    native = net.recipe.image_shape
    shape = tuple(x.shape[1:])
    if shape != native:
        x = _to_native(x, native)
    # The reference set is thousands of images: say so before the wait, and how long after.
    _log(verbose, f"features of {len(x):,} images and the {dataset} {reference_split} split ...")
    start = time.perf_counter()
    ref = reference_features(
        net,
        reference_split,
        n_reference=n_reference,
        classes=class_idx,
        round_trip=shape if shape != native else None,
        seed=seed,
    )
    fake = net.features(x)
    _log(
        verbose,
        f"features of {len(fake):,} images and {len(ref):,} reference images, "
        f"{time.perf_counter() - start:.0f} s",
    )
    names = CLASS_NAMES[dataset]
    predicted = net.predict(x)
    counts = np.bincount(predicted, minlength=len(names))
    report: dict[str, Any] = {
        "dataset": dataset,
        "feature_space": net.feature_space,
        "feature_net": {
            "code_version": net.info.get("code_version"),
            "test_accuracy": net.test_accuracy,
            "test_images": net.info.get("test_images"),
        },
        "num_images": len(fake),
        "image_shape": list(shape),
        "resized_to": list(native) if shape != native else None,
        "reference": {
            "split": reference_split,
            "num_images": len(ref),
            "classes": [names[i] for i in class_idx] if class_idx is not None else None,
        },
        "fid": fid_from_stats(GaussianStats.from_features(ref), GaussianStats.from_features(fake)),
    }
    report.update(
        kid_from_features(
            ref, fake, subset_size=kid_subset_size, num_subsets=kid_subsets, seed=seed
        )
    )
    report.update(precision_recall(ref, fake, k=pr_k, seed=seed))
    report["predicted_class_fractions"] = {
        names[i]: float(counts[i] / len(predicted)) for i in range(len(names))
    }
    if y is not None:
        report.update(class_agreement(predicted, y.long().numpy(), names))
    return report


# ---------------------------------------------------------------------------- report
def format_report(report: dict[str, Any]) -> str:
    """A readable table of an evaluate_* report."""
    ref = report["reference"]
    n, m = report["num_images"], ref["num_images"]
    rows = []
    if "checkpoint" in report:
        s = report["sampling"]
        steps = "default steps" if s["steps"] is None else f"{s['steps']} steps"
        steps += describe_karras_grid(s.get("sigma_max"), s.get("rho"))
        guide = "" if s["guidance"] is None else f", guidance {s['guidance']}"
        if s.get("autoguidance") is not None:
            guide += f", autoguidance {s['autoguidance']:g}"
        guided = s["guidance"] is not None or s.get("autoguidance") not in (None, 1.0)
        if guided and s.get("guidance_interval"):  # it changes the score: said as sample does
            low, high = s["guidance_interval"]
            guide += f" at noise levels {low:g} to {high:g}"
        rows.append(
            (
                "model",
                f"{report['checkpoint']} ({s['sampler']}, {steps}, seed "
                f"{s['seed']}{guide}; {s['seconds']:.0f} s)",
            )
        )
    size = "x".join(map(str, report["image_shape"]))
    if report.get("resized_to"):
        size += " (resized to " + "x".join(map(str, report["resized_to"])) + ")"
    rows += [
        ("samples", f"{n:,} images, {size}"),
        (
            "reference",
            f"{report['dataset']} {ref['split']} split, {m:,} images"
            + (f", classes {', '.join(ref['classes'])}" if ref["classes"] else ""),
        ),
        ("feature space", report["feature_space"]),
        (
            "FID",
            f"{report['fid']:.3f}   ({n:,} vs {m:,} images; lower is better; biased "
            "upward on small samples)",
        ),
        (
            "KID x 1000",
            f"{1000 * report['kid']:.3f} ± {1000 * report['kid_stderr']:.3f}   "
            f"({report['kid_subsets']} subsets of {report['kid_subset_size']:,}; "
            "unbiased, 0 for equal distributions)",
        ),
        (
            "precision",
            f"{report['precision']:.3f}   (samples on the data manifold, "
            f"k={report['pr_k']}, {report['pr_n']:,} vs {report['pr_n']:,})",
        ),
        ("recall", f"{report['recall']:.3f}   (data covered by the samples)"),
    ]
    fractions = report["predicted_class_fractions"]
    rows.append(("classes seen", ", ".join(f"{k} {v:.0%}" for k, v in fractions.items())))
    if "class_agreement" in report:
        rows.append(
            (
                "class agreement",
                f"{report['class_agreement']:.1%} of samples are classified as the class asked for",
            )
        )
    if "nll_bpd" in report:
        rows.append(
            (
                "NLL",
                f"{report['nll_bpd']:.4f} ± {report['nll_bpd_stderr']:.4f} bits/dim "
                f"({report['nll_images']:,} test images; {report['nll_method']})",
            )
        )
        if "nll_note" in report:
            rows.append(("", report["nll_note"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
