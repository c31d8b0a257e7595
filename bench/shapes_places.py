"""Does a shapes text-to-image model put an object where its prompt places it?

    OMP_NUM_THREADS=1 python bench/shapes_places.py CHECKPOINT [--images-per-prompt 2]
        --out FILE.json

Prompts of the grammar's places (docs/shapes.md, "Place captions"), in canonical wording:
every colour, shape and place alone ("a red circle on the left": 72 prompts), and two
phrases in opposite halves ("a red circle on the left and a blue triangle on the right") for
each shape pair and axis, both ways round. Each image is scored by difflab's GenEval-style
scorer (objects, colours, and each placed object in its half). Prompts naming a held-out
composition (a held-out colour-shape pair, or a held-out pair in opposite halves of its
held-out axis) are scored apart. A model trained without place captions (data.places = 0)
places an object by chance, which these prompts measure too.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from difflab.data.shapes_grammar import ObjectSpec, PromptSpec, held_out_in_spec
from difflab.data.shapes_scene import COLOUR_NAMES, OPPOSITE_PLACE, PLACES, SHAPES
from difflab.evaluation import geneval_generator
from difflab.hardware import describe_cpu
from difflab.pipeline import Generator


def place_prompts() -> list[PromptSpec]:
    """Single placed objects, then pairs in opposite halves (distinct colours)."""
    single = [
        PromptSpec((ObjectSpec(shape, colour=colour, place=place),))
        for colour, shape, place in itertools.product(COLOUR_NAMES, SHAPES, PLACES)
    ]
    pairs = []
    colours = itertools.cycle(itertools.permutations(COLOUR_NAMES, 2))
    for (a, b), place in itertools.product(itertools.permutations(SHAPES, 2), ("left", "top")):
        ca, cb = next(colours)
        pairs.append(PromptSpec((ObjectSpec(a, colour=ca, place=place),
                                 ObjectSpec(b, colour=cb, place=OPPOSITE_PLACE[place]))))
    return single + pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    specs = place_prompts()
    report = geneval_generator(gen, images_per_prompt=args.images_per_prompt, seed=args.seed,
                               prompts=[s.text() for s in specs])
    results = report["results"]
    rows = {}
    for kind, n_objects in (("one object", 1), ("two objects", 2)):
        for held in (False, True):
            mine = [r for r in results
                    if len(r["prompt"].split(" and ")) == n_objects and r["held_out"] == held]
            if mine:
                rows[f"{kind}{', held-out' if held else ''}"] = {
                    "images": len(mine), "correct": sum(r["correct"] for r in mine),
                    "accuracy": sum(r["correct"] for r in mine) / len(mine)}
    wrong_place = sum(r["why"] == "objects right, but not where the prompt places them"
                      for r in results)
    out = {"checkpoint": args.checkpoint, "cpu": describe_cpu(), "seed": args.seed,
           "images_per_prompt": args.images_per_prompt, "prompts": len(specs),
           "held_out_prompts": sum(bool(held_out_in_spec(s)) for s in specs),
           "rows": rows, "objects_right_place_wrong": wrong_place,
           "sampling": report["sampling"], "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("| prompts | images | right |\n|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['images']} | {row['accuracy']:.1%} |")
    print(f"objects right but not where placed: {wrong_place} of {len(results)}")


if __name__ == "__main__":
    main()
