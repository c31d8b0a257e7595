"""FID of a checkpoint under autoguidance, against the guide and the weight.

    python bench/autoguidance_sweep.py CHECKPOINT --guides G1 [G2 ...] [--weights 1 1.5 2 3]
        [--samples 2000] [--steps 20] [--interval LOW HIGH] [--reference train] [--out FILE]

Autoguidance (Karras et al. 2024) steers a model away from a worse version of itself:
D_guide + w (D - D_guide). A run keeps its own guide (`train.guide_at`); to choose where in the
run that guide should come from, this script takes the guide from other checkpoints of the same
network instead, e.g. the snapshots of one run at 1/8, 1/4 and 1/2 of its budget. Weight 1 is
the model alone (one network call a step, the others two). Sampler and steps are the
checkpoint's unless given. FID is in difflab's feature space of the checkpoint's dataset;
`--reference train` (10,000 training images) chooses without looking at the test split.
A guide written `CHECKPOINT#guide` is that checkpoint's own guide rather than its weights
(e.g. a shipped model's guide.safetensors, to compare with the guide a longer run kept).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.evaluation import evaluate_generator
from difflab.hardware import describe_cpu
from difflab.pipeline import Generator


def guide_net(guide: str) -> torch.nn.Module:
    """The network a --guides entry names: a checkpoint's EMA weights, or with #guide its
    own guide."""
    path, _, part = guide.partition("#")
    other = Generator.from_checkpoint(path, device="cpu")
    if part not in ("", "guide"):
        raise SystemExit(f"--guides {guide}: after '#' only 'guide' is allowed")
    if part == "guide" and other.guide is None:
        raise SystemExit(f"--guides {guide}: {path} keeps no guide")
    return other.guide if part else other.net


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--guides", nargs="+", required=True,
                   help="checkpoints of the same network to guide with (their EMA weights; "
                        "CHECKPOINT#guide: the guide that checkpoint keeps)")
    p.add_argument("--weights", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only at noise levels in (LOW, HIGH] (the guide is called only "
                        "there; default: the checkpoint's, else every step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", choices=["test", "train"], default="train")
    p.add_argument("--out", required=True, help="the .json to write")
    args = p.parse_args()
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    dataset = gen.config["run"]["data"]["name"]
    reference = {"reference_split": args.reference,
                 "n_reference": 10_000 if args.reference == "train" else None}
    rows = []
    for guide in args.guides:
        gen.guide = guide_net(guide)
        for w in args.weights:
            if w == 1.0 and guide != args.guides[0]:
                continue  # the model alone does not depend on the guide
            t0 = time.time()
            r = evaluate_generator(gen, dataset, args.samples, sampler=args.sampler,
                                   steps=args.steps, seed=args.seed, autoguidance=w,
                                   guidance_interval=args.interval if w != 1.0 else None,
                                   **reference)
            rows.append({"guide": guide if w != 1.0 else None, "weight": w, "fid": r["fid"],
                         "kid": r["kid"], "precision": r["precision"], "recall": r["recall"],
                         "sampling": r["sampling"], "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": args.checkpoint, "samples": args.samples, "seed": args.seed,
              "reference": args.reference, "cpu": describe_cpu(), "rows": rows,
              "feature_space": r["feature_space"]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| guide | weight | FID | precision | recall |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['guide'] or '-'} | {row['weight']:g} | {row['fid']:.2f} "
              f"| {row['precision']:.3f} | {row['recall']:.3f} |")


if __name__ == "__main__":
    main()
