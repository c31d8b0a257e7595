"""Relation regions on development prompts: how many images of the shipped `shapes-text` hold
the named relation, with and without regions, at the regions' settings.

Three development sets, 8 images a prompt: the 16 of bench/shapes_attention_guidance.py (8 of
held-out relation pairs, 8 of seen pairs; one coloured object a side) and DEV2, 8 written
after the first choosing prompts said no (bench/results/shapes_relation_regions/RULE.md), with
sizes and counts and no held-out relation pair. None is a choosing or test prompt. Each arm
is `on:sigma:share` (regions on or off, REGIONS_SIGMA, REGION_SHARE), set on the module.

    OMP_NUM_THREADS=1 python bench/relation_regions_trial.py 0:1:0.625 1:1:0.625 1:3:0.625 \\
        --out bench/results/shapes_relation_regions/development.json
"""

from __future__ import annotations

import argparse
import json

import torch
from shapes_attention_guidance import HELD_OUT, SEEN
from shapes_geneval import cpu_line

import difflab.pipeline.relation_regions as regions
from difflab.metrics.geneval import score_images
from difflab.pipeline.generator import Generator

DEV2 = [
    "two small circles to the left of a triangle",
    "a large red triangle above a small blue circle",
    "one big square right of two little triangles",
    "a triangle below two circles",
    "a big green circle left of a big yellow circle",
    "a small square on top of a large circle",
    "two blue squares beneath one red circle",
    "a picture of a little orange circle to the right of a big purple triangle",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="+", help="on:sigma:share, e.g. 1:1:0.625")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    rows = []
    for arm in args.arms:
        on, sigma, share = arm.split(":")
        regions.REGIONS_SIGMA, regions.REGION_SHARE = float(sigma), float(share)
        row = {"arm": arm}
        for name, prompts in (("held_out_pairs", HELD_OUT), ("seen_pairs", SEEN),
                              ("dev2", DEV2)):
            images = torch.cat([gen.generate(8, prompt=p, seed=args.seed,
                                             relation_regions=on == "1") for p in prompts])
            report = score_images(images, [p for p in prompts for _ in range(8)])
            row[name] = report["categories"]["position"]["correct"]
            row[name + "_per_prompt"] = [
                sum(r["correct"] for r in report["results"][8 * i: 8 * i + 8])
                for i in range(len(prompts))]
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"cpu": cpu_line(), "seed": args.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
