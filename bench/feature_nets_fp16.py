"""Export the metrics' feature classifiers as the shipped fp16 files, and measure what fp16
storage changes: features, predictions, test accuracy and FID against the fp32 originals.

    python bench/feature_nets_fp16.py [--datasets fashion_mnist mnist digits] [--retrain]
        [--out bench/results/feature_nets_fp16.json]

Source: the cached nets (~/.cache/difflab/features or $DIFFLAB_CACHE), which
difflab.metrics.features.train_feature_net wrote with its default seed; each is checked
against its cache JSON (sha256, CODE_VERSION, the current recipe) and its test accuracy is
measured again with the package's own code before it is exported. --retrain trains each
net again with the same function and seed and reports whether the weights come out
bit-identical (they should on the same machine and thread count).

FID is compared on fixed image sets, each against the dataset's metric test split, with
features from the fp32 and the fp16 net: real training images, the same with Gaussian
noise (std 40 of 255), and for fashion_mnist 1,000 samples of the shipped `fashion-mnist`
model (DPM-Solver++(2M), 20 steps, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from difflab.metrics import features as F
from difflab.metrics.fid import fid_from_features


def noisy(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.float() + std * torch.randn(images.shape, generator=g)).round().clamp(
        0, 255
    ).to(torch.uint8)


def image_sets(dataset: str, n: int) -> dict[str, torch.Tensor]:
    train = F.metric_split(dataset, "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    real = train.images[pick.sort().values]
    sets = {f"{len(real)} real train images": real, f"{len(real)} noisy (std 40)": noisy(real, 40)}
    if dataset == "fashion_mnist":
        from difflab.pipeline import Generator

        gen = Generator.from_checkpoint("fashion-mnist", device="cpu")
        sets["1000 samples of shipped fashion-mnist"] = gen.generate(
            1000, sampler="dpmpp_2m", steps=20, seed=0, batch_size=250
        )
    return sets


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def record_check(dataset: str, row: dict) -> None:
    """Add the fp16-vs-fp32 figures to the shipped JSON (its sha256 covers the weights only)."""
    _, meta = F.shipped_paths(dataset)
    info = json.loads(meta.read_text())
    info["fp16_vs_fp32"] = {
        "test_prediction_agreement": row["prediction_agreement"],
        "feature_max_abs_diff": row["feature_max_abs_diff"],
        "feature_mean_abs": row["feature_mean_abs"],
        "fid": row["fid"],
        "measured_by": "bench/feature_nets_fp16.py",
    }
    meta.write_text(json.dumps(info, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(F.DATASETS))
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--images", type=int, default=5000, help="real images per FID set")
    p.add_argument("--out", default="bench/results/feature_nets_fp16.json")
    args = p.parse_args()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print("command:", command)
    results = {"command": command, "threads": torch.get_num_threads(), "datasets": {}}
    for dataset in args.datasets:
        weights, meta = F.cache_paths(dataset)
        net = F.load_feature_net(dataset)  # None if missing or not matching its JSON
        if net is None:
            raise SystemExit(f"no valid cached {dataset} feature net at {weights}")
        if net.info.get("recipe") != json.loads(json.dumps(asdict(F.RECIPES[dataset]))):
            raise SystemExit(f"{weights} was trained with another recipe than the current one")
        if net.info.get("seed") != F.DEFAULT_SEED:
            raise SystemExit(f"{weights} was not trained with the default seed")
        test = F.metric_split(dataset, "test")
        acc32 = net.accuracy(test)
        row: dict = {
            "cache_file": str(weights),
            "cache_sha256": net.info["sha256"],
            "cache_json_test_accuracy": net.info["test_accuracy"],
            "measured_test_accuracy_fp32": acc32,
        }
        print(f"{dataset}: cached net, test accuracy {acc32:.4f} measured "
              f"({net.info['test_accuracy']:.4f} in its JSON)")
        if args.retrain:
            t0 = time.perf_counter()
            again = F.train_feature_net(dataset, verbose=False)
            row["retrained_bit_identical"] = same_weights(again, net)
            row["retrain_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{dataset}: retrained in {row['retrain_seconds']} s, bit-identical: "
                  f"{row['retrained_bit_identical']}")
        trained_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(weights)))
        provenance = {
            "trained": {
                "how": f"difflab.metrics.features.train_feature_net({dataset!r}) with "
                "seed 0, as feature_extractor runs it on first use (one intra-op thread)",
                "date": trained_at,
                "cpu": F._cpu_name(),  # trained on this machine, which also exports
                "fp32_sha256": net.info["sha256"],
                "reproduced_bit_identical": row.get("retrained_bit_identical"),
            },
        }
        shipped = F.export_shipped_feature_net(net, provenance)
        half = F.load_shipped_feature_net(dataset)
        assert half is not None
        f32, f16 = net.features(test.images), half.features(test.images)
        diff = np.abs(f32 - f16)
        row.update(
            shipped_file=str(shipped),
            shipped_bytes=shipped.stat().st_size,
            fp32_bytes=weights.stat().st_size,
            test_accuracy_fp16=half.test_accuracy,
            prediction_agreement=float((net.predict(test.images) == half.predict(test.images))
                                       .mean()),
            feature_max_abs_diff=float(diff.max()),
            feature_mean_abs_diff=float(diff.mean()),
            feature_mean_abs=float(np.abs(f32).mean()),
            fid={},
        )
        for name, images in image_sets(dataset, args.images).items():
            a = fid_from_features(f32, net.features(images))
            b = fid_from_features(f16, half.features(images))
            row["fid"][name] = {"fp32": a, "fp16": b, "diff": b - a}
            print(f"{dataset}: FID of {name}: fp32 {a:.4f}, fp16 {b:.4f}, diff {b - a:+.5f}")
        print(f"{dataset}: fp16 test accuracy {half.test_accuracy:.4f}, predictions agree "
              f"{row['prediction_agreement']:.4%}, feature max |diff| "
              f"{row['feature_max_abs_diff']:.2e} (mean |feature| {row['feature_mean_abs']:.3f})")
        results["datasets"][dataset] = row
        record_check(dataset, row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
