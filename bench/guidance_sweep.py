"""Class agreement and FID of a class-conditional checkpoint against the guidance scale.

    python bench/guidance_sweep.py CHECKPOINT [--scales 0 1 2 3 5] [--samples 1000]
        [--sampler dpmpp_2m] [--steps 20] [--out bench/results/guidance_NAME]

Samples are scored by difflab's feature classifier of the checkpoint's dataset (difflab.metrics;
Inception weights cannot be had offline): class agreement = share of samples the classifier puts
in the class they were asked for; FID against the test split in that classifier's feature space.
Scale 0 is the unconditional model (the null label), 1 the plain conditional one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from difflab.evaluation import evaluate_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 5.0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="guide only at these noise levels sigma/alpha (every scale)")
    p.add_argument("--reference", choices=["test", "train"], default="test",
                   help="real images FID is taken against: 'train' (10,000 of them) to choose "
                   "settings without looking at the reported test split")
    p.add_argument("--out", default=None, help="path prefix for .json and .png")
    args = p.parse_args()
    out = Path(args.out or f"bench/results/guidance_{Path(args.checkpoint).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in args.scales:
        t0 = time.time()
        r = evaluate_checkpoint(args.checkpoint, args.samples, sampler=args.sampler,
                                steps=args.steps, seed=args.seed, guidance=w,
                                guidance_interval=args.guidance_interval,
                                reference_split=args.reference,
                                n_reference=10_000 if args.reference == "train" else None)
        rows.append({"guidance": w, "class_agreement": r.get("class_agreement"),
                     "fid": r["fid"], "precision": r["precision"], "recall": r["recall"],
                     "seconds": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)
    report = {"checkpoint": args.checkpoint, "samples": args.samples, "sampler": args.sampler,
              "steps": args.steps, "guidance_interval": args.guidance_interval,
              "reference": args.reference, "feature_space": r["feature_space"], "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(f"\nfeature space: {r['feature_space']}; {args.samples} samples per scale, "
          f"{args.sampler} {args.steps} steps\n")
    print("| guidance | class agreement | FID | precision | recall |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['guidance']:g} | {100 * row['class_agreement']:.1f} % | {row['fid']:.2f} "
              f"| {row['precision']:.3f} | {row['recall']:.3f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ws = [r["guidance"] for r in rows]
    ax.plot(ws, [100 * r["class_agreement"] for r in rows], "o-", color="C0")
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("class agreement (%)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(ws, [r["fid"] for r in rows], "s--", color="C1")
    ax2.set_ylabel("FID (classifier features)", color="C1")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
