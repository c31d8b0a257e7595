"""difflab.metrics: sample quality and likelihood numbers people can trust.

    from difflab.metrics import evaluate_images, evaluate_checkpoint, format_report
    report = evaluate_images(images_uint8, "fashion_mnist")   # FID, KID, precision, recall
    print(format_report(report))

FID (fid.py), KID (kid.py) and k-NN precision / recall (prd.py) are computed in the 128-d
feature space of a small CNN classifier difflab trains on each dataset's real training split
and caches (features.py), not Inception's: every report names its `feature_space`. NLL in bits
per dimension comes from the variational bound (discrete processes) or the probability-flow ODE
(continuous ones). `difflab eval` is command.py.

Names are loaded on first use, so that `difflab.metrics.command` (the command line's arguments)
imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "add_eval_arguments": "command",
    "eval_main": "command",
    "as_uint8_images": "evaluate",
    "checkpoint_nll": "evaluate",
    "evaluate_checkpoint": "evaluate",
    "evaluate_generator": "evaluate",
    "evaluate_images": "evaluate",
    "format_report": "evaluate",
    "load_images_file": "evaluate",
    "reference_features": "evaluate",
    "CODE_VERSION": "features",
    "DATASETS": "features",
    "FEATURE_DIM": "features",
    "FeatureNet": "features",
    "feature_extractor": "features",
    "metric_split": "features",
    "train_feature_net": "features",
    "GaussianStats": "fid",
    "fid_from_stats": "fid",
    "fid_from_features": "fid",
    "frechet_distance": "fid",
    "kid_from_features": "kid",
    "mmd2_unbiased": "kid",
    "polynomial_kernel": "kid",
    "class_agreement": "prd",
    "knn_radii": "prd",
    "precision_recall": "prd",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
