"""difflab.metrics: sample quality numbers people can trust, from images alone.

    from difflab.metrics import evaluate_images, format_report
    report = evaluate_images(images_uint8, "fashion_mnist")   # FID, KID, precision, recall
    print(format_report(report))

FID (fid.py), KID (kid.py) and k-NN precision / recall (prd.py) are computed in the 128-d
feature space of a small CNN classifier difflab trains on each dataset's real training split
and caches (features.py), not Inception's: every report names its `feature_space`. This floor
knows nothing of models: sampling a checkpoint and scoring it, and its NLL in bits per
dimension, are difflab.evaluation.
"""

from difflab.metrics.evaluate import (
    as_uint8_images,
    evaluate_images,
    format_report,
    load_images_file,
    reference_features,
)
from difflab.metrics.features import (
    CODE_VERSION,
    DATASETS,
    FEATURE_DIM,
    FeatureNet,
    feature_extractor,
    metric_split,
    train_feature_net,
)
from difflab.metrics.fid import GaussianStats, fid_from_features, fid_from_stats, frechet_distance
from difflab.metrics.kid import kid_from_features, mmd2_unbiased, polynomial_kernel
from difflab.metrics.prd import class_agreement, knn_radii, precision_recall

__all__ = [
    "CODE_VERSION",
    "DATASETS",
    "FEATURE_DIM",
    "FeatureNet",
    "GaussianStats",
    "as_uint8_images",
    "class_agreement",
    "evaluate_images",
    "feature_extractor",
    "fid_from_features",
    "fid_from_stats",
    "format_report",
    "frechet_distance",
    "kid_from_features",
    "knn_radii",
    "load_images_file",
    "metric_split",
    "mmd2_unbiased",
    "polynomial_kernel",
    "precision_recall",
    "reference_features",
    "train_feature_net",
]
