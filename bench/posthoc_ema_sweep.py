"""FID of a run's model against the length of its weight average (post-hoc EMA, EDM2).

    python bench/posthoc_ema_sweep.py RUN/last --lengths 0.05 0.08 0.1 [--guide-lengths 0.05 ...]
        [--samples 2000] [--steps 13] [--interval LOW HIGH] [--reference train] --out FILE

The run must have kept post-hoc EMA snapshots (`train.posthoc_ema`). The first row is the run's
own EMA (`train.ema_decay`) with its own guide; then each `--lengths` value rebuilt from the
snapshots (difflab.training.posthoc_snapshots.rebuild) with the run's own guide; then, with the
best of those, each `--guide-lengths` value for autoguidance's guide, rebuilt at the step the
run kept it. Sampler, steps, autoguidance weight and interval are the checkpoint's unless
given. `--reference train` (10,000 training images) chooses without looking at the test split;
`difflab export RUN/last OUT --ema-length L --guide-ema-length G` writes the chosen model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from difflab.checkpoints.store import load_checkpoint, load_weights_into
from difflab.evaluation import evaluate_generator
from difflab.hardware import describe_cpu
from difflab.pipeline import Generator
from difflab.training.posthoc_snapshots import rebuild


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--lengths", type=float, nargs="+", required=True)
    p.add_argument("--guide-lengths", type=float, nargs="*", default=[])
    p.add_argument("--no-own", action="store_true", help="skip the run's own EMA row")
    p.add_argument("--guide-only", action="store_true",
                   help="score only the guide's lengths, with the first --lengths value")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--autoguidance", type=float, default=None)
    p.add_argument("--interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", choices=["test", "train"], default="train")
    p.add_argument("--out", required=True, help="the .json to write")
    args = p.parse_args()
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    own = {"net": {k: v.clone() for k, v in gen.net.state_dict().items()},
           "guide": ({k: v.clone() for k, v in gen.guide.state_dict().items()}
                     if gen.guide is not None else None)}
    guide_step = load_checkpoint(args.checkpoint, with_training_state=True).state.get("guide_step")
    dataset = gen.config["run"]["data"]["name"]
    reference = {"reference_split": args.reference,
                 "n_reference": 10_000 if args.reference == "train" else None}
    rows: list[dict] = []

    def score(length: float | None, guide_length: float | None) -> dict:
        net = own["net"] if length is None else rebuild(args.checkpoint, length)[0]
        load_weights_into(gen.net, net, f"length {length}")
        if gen.guide is not None:
            guide = (own["guide"] if guide_length is None
                     else rebuild(args.checkpoint, guide_length, guide_step)[0])
            load_weights_into(gen.guide, guide, f"guide length {guide_length}")
        t0 = time.time()
        r = evaluate_generator(gen, dataset, args.samples, sampler=args.sampler,
                               steps=args.steps, seed=args.seed, autoguidance=args.autoguidance,
                               guidance_interval=args.interval, **reference)
        row = {"length": length, "guide_length": guide_length, "fid": r["fid"], "kid": r["kid"],
               "precision": r["precision"], "recall": r["recall"], "sampling": r["sampling"],
               "feature_space": r["feature_space"], "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    if not args.no_own and not args.guide_only:
        score(None, None)
    best = args.lengths[0] if args.guide_only else min(
        (score(length, None) for length in args.lengths), key=lambda r: r["fid"])["length"]
    for guide_length in args.guide_lengths:
        score(best, guide_length)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": args.checkpoint, "samples": args.samples, "seed": args.seed,
              "reference": args.reference, "guide_step": guide_step, "cpu": describe_cpu(),
              "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| EMA length | guide's length | FID | precision | recall |\n|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['length'] or 'own'} | {row['guide_length'] or 'own'} | {row['fid']:.2f} "
              f"| {row['precision']:.3f} | {row['recall']:.3f} |")


if __name__ == "__main__":
    main()
