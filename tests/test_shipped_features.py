"""The metrics' feature classifiers ship with the package: they load with no cache, offline,
never train, are the fp16 files their JSON vouches for, and reach the test accuracy it records.
"""

import json
import shutil
import tomllib
from dataclasses import asdict
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflab.metrics import evaluate_images, features
from difflab.metrics.features import DATASETS, RECIPES, metric_split, shipped_paths

ROOT = Path(__file__).resolve().parents[1]


def refuse_training(*args, **kwargs):
    raise AssertionError("a shipped feature net must not be trained")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty $DIFFLAB_CACHE, nothing loaded in memory, and training made to fail."""
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "_LOADED", {})
    monkeypatch.setattr(features, "train_feature_net", refuse_training)
    monkeypatch.setattr(features, "_train", refuse_training)
    return tmp_path / "cache"


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_files_are_small_fp16_and_documented(dataset):
    weights, meta = shipped_paths(dataset)
    assert weights.is_file() and meta.is_file()
    assert weights.stat().st_size < 300_000
    state = load_file(str(weights))
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    info = json.loads(meta.read_text())
    # Provenance: how it was trained (recipe, seed, epochs), how well, when and where.
    assert info["recipe"] == json.loads(json.dumps(asdict(RECIPES[dataset])))
    assert info["seed"] == features.DEFAULT_SEED and info["epochs"] == RECIPES[dataset].epochs
    assert info["code_version"] == features.CODE_VERSION and info["dtype"] == "float16"
    assert info["test_accuracy"] >= RECIPES[dataset].min_test_accuracy
    assert info["trained"]["date"] and info["trained"]["cpu"]["processor"]
    assert info["sha256"] == features._sha256(weights)


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_net_loads_without_cache_and_never_trains(dataset, empty_cache):
    net = features.feature_extractor(dataset, verbose=False)
    assert net.info["source"] == "shipped"
    assert next(net.parameters()).dtype == torch.float32  # computed in fp32
    # Measured again on the held-out split (which no training saw): the JSON's figure,
    # up to a couple of predictions that another CPU's float rounding may flip.
    test = metric_split(dataset, "test")
    margin = max(0.002, 2 / len(test))
    assert net.accuracy(test) >= net.test_accuracy - margin
    assert not (empty_cache / "features").exists()  # nothing trained, nothing cached


def test_eval_works_at_once_with_an_empty_cache(empty_cache):
    train = metric_split("digits", "train")
    report = evaluate_images(train.images[:400], "digits", kid_subset_size=100, kid_subsets=5)
    assert np.isfinite(report["fid"]) and "digits CNN features (test acc" in report["feature_space"]
    assert not (empty_cache / "features").exists()


def test_a_damaged_shipped_file_is_an_error_not_a_retraining(tmp_path, empty_cache, monkeypatch):
    weights, meta = shipped_paths("digits")
    shutil.copy(meta, tmp_path / meta.name)
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    (tmp_path / weights.name).write_bytes(bytes(data))
    monkeypatch.setattr(features, "SHIPPED_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="damaged.*reinstall"):
        features.feature_extractor("digits", verbose=False)


def test_package_data_ships_the_feature_weights():
    """pyproject's package-data globs (what a wheel and a plain install copy) match every
    shipped file; an editable install reads them in place."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["difflab"]
    package = ROOT / "src" / "difflab"
    for dataset in DATASETS:
        for path in shipped_paths(dataset):
            rel = path.relative_to(package).as_posix()
            assert any(fnmatch(rel, p) for p in patterns), rel
