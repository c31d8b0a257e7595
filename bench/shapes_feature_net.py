"""Train and ship the shapes world's feature network, and measure what its FID reads.

    OMP_NUM_THREADS=1 .venv/bin/python bench/shapes_feature_net.py [--no-export]

Trains ``difflab.metrics.shapes_features.train_shapes_feature_net()`` (seed 0, one thread),
writes it as ``src/difflab/metrics/feature_weights/shapes-v1.{safetensors,json}`` (fp16 with
its provenance), then computes FIDs of images drawn for the 99 test prompts, four each,
against the reference scenes of ``shapes_fid``: scenes of the same prompts at other layout
seeds (the floor a perfect model reaches), and the same scenes blurred, noisy, with their
colours rotated, or blank (what a flawed model does).
Writes ``bench/results/shapes_feature_net.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from shapes_geneval import cpu_line

from difflab.data.shapes import geneval_prompts, scenes_for_specs
from difflab.data.shapes_scene import render
from difflab.metrics import shapes_features as sf

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-export", action="store_true", help="measure the shipped net only")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/shapes_feature_net.json")
    args = ap.parse_args()
    record: dict = {"command": shlex.join([Path(sys.executable).as_posix(), *sys.argv]),
                    "cpu": cpu_line(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.no_export:
        net = sf.train_shapes_feature_net()
        how = ("difflab.metrics.shapes_features.train_shapes_feature_net() with seed 0, one "
               "intra-op thread (bench/shapes_feature_net.py)")
        sf.export_shapes_feature_net(net, {"trained": {"how": how, "cpu": record["cpu"]}})
        record["trained"] = net.info
    sf._LOADED.clear()
    net = sf.shapes_feature_net()
    record["shipped"] = {k: net.info[k] for k in ("test_accuracy", "test_accuracy_fp32", "sha256")}
    specs = [p for ps in geneval_prompts().values() for p in ps for _ in range(4)]
    texts = [p.text() for p in specs]
    fids = {}
    for seed in (1, 2, 3):
        name = f"scenes of the same prompts, layout seed {seed}"
        fids[name] = render(scenes_for_specs(specs, seed))
    clean = fids["scenes of the same prompts, layout seed 1"]  # the scenes flawed below
    rng = np.random.default_rng(0)
    flawed = {
        "blurred (sigma 0.5 px)": ndimage.gaussian_filter(clean.astype(float), (0, 0, 0.5, 0.5)),
        "blurred (sigma 1 px)": ndimage.gaussian_filter(clean.astype(float), (0, 0, 1.0, 1.0)),
        "pixel noise (sigma 10 of 255)": clean + rng.normal(0, 10, clean.shape),
        "pixel noise (sigma 25 of 255)": clean + rng.normal(0, 25, clean.shape),
        "colours rotated (RGB -> GBR)": clean[:, [1, 2, 0]],
        "blank": np.zeros_like(clean),
    }
    for name, x in flawed.items():
        fids[name] = np.clip(x, 0, 255).round().astype(np.uint8)
    reports = {name: sf.shapes_fid(np.ascontiguousarray(x), texts) for name, x in fids.items()}
    record["fid"] = {name: round(r["fid"], 3) for name, r in reports.items()}
    record["floor"] = round(next(iter(reports.values()))["floor"], 3)  # layout seed 1 vs 0
    record["images"] = len(texts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
