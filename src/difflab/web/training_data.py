"""A checkpoint's training data, for the page: its images (Explore's forward process) and
the health warnings beside generated images (the training run's checks, on the page's samples).

`difflab.training.health` judges samples against statistics of the training data (noise,
black, white, flat, saturated, near-copies); a run prints its findings while it trains. The
page runs the same check on the images it just drew, so a checkpoint that draws noise says so
beside its pictures instead of leaving the reader to guess. The data's statistics come from
the checkpoint itself when it recorded them (runs since 2026-12-07, own image folders too), else
from its data settings, once per dataset; only the built-in datasets, which are on disk once
installed, are loaded (never a download, never an arbitrary image folder).
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from difflab.config import config_from_dict
from difflab.data import load_dataset
from difflab.pipeline import Generator
from difflab.training import health

# Datasets whose statistics the page computes: they load from local files in seconds.
CHECKED_DATASETS = ("fashion_mnist", "mnist", "digits")

_images: dict[str, torch.Tensor] = {}
_stats: dict[str, health.DataStats] = {}
_lock = threading.Lock()


def training_images(gen: Generator) -> tuple[torch.Tensor, str]:
    """(uint8 (N, C, H, W) training images of `gen`'s checkpoint, its dataset's key), loaded
    once per dataset; a ValueError says why when they cannot be (another dataset, not on
    disk, a checkpoint without its run settings)."""
    run = gen.config.get("run")
    if not run:
        raise ValueError("the checkpoint does not say what it was trained on")
    cfg = dataclasses.replace(config_from_dict(run).data, download=False)
    if cfg.name not in CHECKED_DATASETS:
        raise ValueError(
            f"it was trained on {cfg.name!r}; the page loads only {', '.join(CHECKED_DATASETS)}"
        )
    key = repr(cfg)
    with _lock:
        if key not in _images:
            try:
                _images[key] = load_dataset(cfg).images
            except (OSError, ImportError) as e:
                raise ValueError(f"the training data did not load ({e})") from e
        return _images[key], key


def data_stats(gen: Generator) -> health.DataStats | str:
    """The training data's statistics for `gen`'s checkpoint, or why there are none: those
    the checkpoint recorded (runs since 2026-12-07, on any data), else those of its built-in
    dataset."""
    recorded = health.stats_from_dict(gen.config.get("data_stats"))
    if recorded is not None:
        return recorded
    try:
        images, key = training_images(gen)
    except ValueError as e:
        return f"no health check: {e}"
    with _lock:
        if key not in _stats:
            _stats[key] = health.data_stats(images)
        return _stats[key]


def health_notes(gen: Generator, images: torch.Tensor, step: int | None) -> list[str]:
    """One line per finding on `images` (uint8 (N, C, H, W)) of a checkpoint saved at `step`
    (None: not known), or that none was made."""
    stats = data_stats(gen)
    if isinstance(stats, str):
        return [stats]
    findings = health.check_samples(images, stats, step)
    if not findings:
        return [f"health: {health.summary(findings)}"]
    return [f"health warning: {f.message}" for f in findings]
