"""A feature space for the shapes world, and FID in it: is a shapes model's picture quality
traded away for following prompts?

GenEval-style scores (difflab.metrics.geneval) say whether the right objects are there; they
do not say whether the pictures look like the world's (crisp edges, flat colours, clean black
background). FID says that, but Inception features cannot be had offline and know nothing of
32x32 scenes of flat shapes, so, as for Fashion-MNIST (difflab.metrics.features), difflab
trains a small CNN on the domain and computes the Fréchet distance (Heusel et al. 2017, eq. 6)
in its 128-d penultimate layer.

What the CNN learns to read from a rendered scene (its targets, all written from the scene,
never from a caption):
- how many objects of each colour and shape (18 counts, 0-4 each),
- how many of each shape and size (6 counts),
- which cells of a 4x4 grid hold the centre of an object of each shape (48 bits),
so the features carry colour, shape, size, number and layout. It trains on fresh training
scenes and on scenes drawn for the test prompts (which hold the held-out compositions, so the
features are not blind to them), and is checked on scenes of another seed.

:func:`shapes_fid` compares images drawn for some prompts with scenes rendered for the same
prompts (difflab.data.shapes.scenes_for_specs): the text-to-image FID of COCO-style
evaluations, with the reference drawn from the world itself. The shipped net
(``feature_weights/shapes-v1.*``) makes figures comparable across machines; without it the net
is trained on first use (about two CPU-minutes) and the figures say so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab.data.shapes import draw_training_scenes, geneval_prompts, scenes_for_specs
from difflab.data.shapes_grammar import PromptSpec, parse_prompt
from difflab.data.shapes_scene import (
    COLOUR_NAMES,
    IMAGE_SIZE,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    SceneBatch,
    render,
)
from difflab.data.transforms import to_float

from ._threads import single_threaded
from .features import (
    CODE_VERSION,
    FeatureNet,
    Recipe,
    read_shipped_net,
    write_shipped_net,
)
from .fid import fid_from_features

DATASET = "shapes"
RECIPE = Recipe(
    (3, IMAGE_SIZE, IMAGE_SIZE), (32, 64, 128), (True, True, True), epochs=15, batch_size=128,
    lr=3e-3, hflip=False, shift=0, holdout_per_class=None, min_test_accuracy=0.90,
)  # fmt: skip
COUNTS = MAX_OBJECTS + 1  # 0-4 objects of a kind
GRID = 4  # occupancy cells per side (8x8 pixels each)
_COLOUR_SHAPE, _SHAPE_SIZE = len(SHAPES) * len(COLOUR_NAMES), len(SHAPES) * len(SIZES)
_COUNTED = _COLOUR_SHAPE + _SHAPE_SIZE  # 24 counts
OUTPUTS = _COUNTED * COUNTS + len(SHAPES) * GRID * GRID  # 120 count logits + 48 bits
TRAIN_SEED, CHECK_SEED = 101, 202  # the scenes the net learns on, and those it is checked on
REFERENCE_SEED = 0  # the layouts of the reference scenes of shapes_fid


def scene_targets(batch: SceneBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """What the CNN learns per scene: counts (N, 24) int64 (18 colour-shape kinds, then 6
    shape-size kinds) and occupancy (N, 48) float (per shape, the 4x4 cells holding a centre)."""
    n = len(batch)
    present = batch.present
    counts = np.zeros((n, _COUNTED), dtype=np.int64)
    occupancy = np.zeros((n, len(SHAPES), GRID, GRID), dtype=np.float32)
    cell = np.clip((batch.xy / (IMAGE_SIZE / GRID)).astype(np.int64), 0, GRID - 1)
    rows = np.arange(n)
    for k in range(MAX_OBJECTS):
        has = present[:, k]
        shape, colour, size = (a[:, k].astype(np.int64) for a in (batch.shape, batch.colour,
                                                                   batch.size))
        r = rows[has]
        np.add.at(counts, (r, (shape * len(COLOUR_NAMES) + colour)[has]), 1)
        np.add.at(counts, (r, _COLOUR_SHAPE + (shape * len(SIZES) + size)[has]), 1)
        occupancy[r, shape[has], cell[has, k, 1], cell[has, k, 0]] = 1.0
    return torch.from_numpy(counts), torch.from_numpy(occupancy.reshape(n, -1))


def _scenes(seed: int, n_train: int, n_test: int) -> SceneBatch:
    """``n_train`` training-distribution scenes and ``n_test`` scenes of the test prompts."""
    prompts = [p for ps in geneval_prompts().values() for p in ps]
    train = draw_training_scenes(n_train, seed)
    test = scenes_for_specs([prompts[i % len(prompts)] for i in range(n_test)], seed)
    return SceneBatch(*(np.concatenate([getattr(train, f), getattr(test, f)])
                        for f in ("shape", "colour", "size", "xy")))  # fmt: skip


def _loss(logits: torch.Tensor, counts: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    count_logits = logits[:, : _COUNTED * COUNTS].reshape(-1, COUNTS)
    return nn.functional.cross_entropy(count_logits, counts.reshape(-1)) + (
        nn.functional.binary_cross_entropy_with_logits(logits[:, _COUNTED * COUNTS :], occupancy)
    )


def new_net() -> FeatureNet:
    """An untrained shapes feature net (the architecture of the shipped one)."""
    net = FeatureNet(DATASET, OUTPUTS, RECIPE)
    net.accuracy_label = "scenes read right"
    return net


def scene_accuracy(net: FeatureNet, images: np.ndarray, batch: SceneBatch) -> float:
    """Share of scenes whose 24 counts the net reads all exactly right."""
    counts, _ = scene_targets(batch)
    logits = net.logits(images)
    predicted = logits[:, : _COUNTED * COUNTS].reshape(len(images), _COUNTED, COUNTS).argmax(-1)
    return float((predicted == counts).all(dim=1).double().mean())


def _check_split() -> tuple[np.ndarray, SceneBatch]:
    batch = _scenes(CHECK_SEED, 1500, 500)
    return render(batch), batch


def train_shapes_feature_net(
    seed: int = 0, n_train: int = 16_000, n_test: int = 4_000, verbose: bool = True
) -> FeatureNet:
    """Train the net on fresh scenes (Adam, one-cycle, single-threaded and seeded: the same
    weights on the same machine); ``.test_accuracy`` is :func:`scene_accuracy` on 2,000
    scenes of another seed."""
    start = time.perf_counter()
    batch = _scenes(TRAIN_SEED, n_train, n_test)
    images = torch.from_numpy(render(batch))
    counts, occupancy = scene_targets(batch)
    steps_per_epoch = len(images) // RECIPE.batch_size
    with torch.random.fork_rng(devices=[]), single_threaded():
        torch.manual_seed(seed)
        net = new_net()
        opt = torch.optim.Adam(net.parameters(), lr=RECIPE.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, RECIPE.lr, total_steps=RECIPE.epochs * steps_per_epoch, pct_start=0.15
        )
        order = torch.Generator().manual_seed(seed)
        for epoch in range(RECIPE.epochs):
            net.train()
            perm = torch.randperm(len(images), generator=order)
            for i in range(steps_per_epoch):
                idx = perm[i * RECIPE.batch_size : (i + 1) * RECIPE.batch_size]
                loss = _loss(net(to_float(images[idx])), counts[idx], occupancy[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if verbose:
                print(f"difflab: shapes feature net: epoch {epoch + 1}/{RECIPE.epochs}, loss "
                      f"{loss.item():.3f}, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    net.eval()
    net.test_accuracy = scene_accuracy(net, *_check_split())
    net.info = {
        "dataset": DATASET, "code_version": CODE_VERSION, "seed": seed, "feature_dim": 128,
        "test_accuracy": net.test_accuracy, "test_metric": "scenes with all 24 counts right",
        "train_images": len(images), "test_images": 2000, "epochs": RECIPE.epochs,
        "train_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
        "recipe": asdict(RECIPE), "targets": "24 counts (18 colour-shape, 6 shape-size) and "
        "48 occupancy bits (shape x 4x4 cell)",
    }  # fmt: skip
    return net


def export_shapes_feature_net(
    net: FeatureNet, provenance: dict[str, Any] | None = None
) -> Path:
    """Write ``net`` as the shipped ``feature_weights/shapes-v1.*`` (fp16 + JSON)."""
    check = _check_split()
    return write_shipped_net(net, new_net, lambda n: scene_accuracy(n, *check), provenance)


_LOADED: list[FeatureNet] = []


def shapes_feature_net(verbose: bool = True) -> FeatureNet:
    """The shipped shapes feature net; without one, trained now (once per process)."""
    if not _LOADED:
        net = read_shipped_net(DATASET, new_net)
        if net is None:
            if verbose:
                print("difflab: no shipped shapes feature net; training one (about two "
                      "CPU-minutes; its FIDs compare only with this machine's)",
                      file=sys.stderr, flush=True)  # fmt: skip
            net = train_shapes_feature_net(verbose=verbose)
        _LOADED.append(net)
    return _LOADED[0]


def _as_chw(images: Any) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] not in (
        (3, IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE, 3)
    ):
        raise ValueError(
            f"shapes FID takes uint8 RGB images (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) or (N, "
            f"{IMAGE_SIZE}, {IMAGE_SIZE}, 3); got {x.dtype} with shape {x.shape}"
        )
    return np.ascontiguousarray(x if x.shape[1] == 3 else x.transpose(0, 3, 1, 2))


def shapes_fid(
    images: Any, prompts: Sequence[str | PromptSpec], seed: int = REFERENCE_SEED
) -> dict[str, Any]:
    """FID of ``images`` (one per prompt) against scenes rendered for the same prompts with
    layouts drawn from ``seed``, in the shapes CNN's feature space, and its floor: the FID of
    the same prompts' scenes with layouts from ``seed + 1``."""
    x = _as_chw(images)
    specs = [p if isinstance(p, PromptSpec) else parse_prompt(p) for p in prompts]
    if len(specs) != len(x):
        raise ValueError(f"{len(x)} images but {len(specs)} prompts; give one prompt per image")
    if len(x) < 2:
        raise ValueError(f"FID needs at least 2 images, got {len(x)}")
    net = shapes_feature_net()
    reference = net.features(render(scenes_for_specs(specs, seed)))
    world = net.features(render(scenes_for_specs(specs, seed + 1)))
    return {
        "fid": fid_from_features(net.features(x), reference),
        # FID is biased upwards at a few hundred images, and the bias depends on the count; the
        # world against itself (other layouts of the same prompts) is what a perfect model
        # scores at this count: about 14 at 396 images, 29 at 198.
        "floor": fid_from_features(world, reference),
        "images": len(x),
        "feature_space": net.feature_space,
        "reference": f"scenes rendered for the same prompts, layout seed {seed}",
    }
