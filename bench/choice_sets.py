"""What the rules' fresh prompt sets share (bench/binding_choice.py,
bench/relation_regions_choice.py, bench/pair_regions_choice.py): each set of prompts drawn with
one setting on the shipped `shapes-text` and scored by the GenEval-style scorer, and the file
a choice writes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from difflab.metrics.geneval import score_images
from difflab.pipeline import Generator


def draw_sets(gen: Generator, sets: dict[str, list[str]], images: int, seed: int,
              **settings: Any) -> dict[str, Any]:
    """Each set's prompts drawn `images` times at `seed` with `settings`: the images right in
    all (`name`) and per prompt (`name_per_prompt`), and how many images in all."""
    row: dict[str, Any] = {}
    for name, prompts in sets.items():
        drawn = torch.cat([gen.generate(images, prompt=p, seed=seed, **settings)
                           for p in prompts])
        results = score_images(drawn, [p for p in prompts for _ in range(images)])["results"]
        row[name] = sum(r["correct"] for r in results)
        row[name + "_per_prompt"] = [sum(r["correct"] for r in results[i: i + images])
                                     for i in range(0, len(results), images)]
    row["images"] = images * sum(len(prompts) for prompts in sets.values())
    return row


def write_choice(out: Path, seed: int, images: int, rows: list[dict[str, Any]]) -> None:
    out.write_text(json.dumps({"seed": seed, "images_per_prompt": images, "rows": rows},
                              indent=1) + "\n")


def run_choice(doc: str, sets: dict[str, list[str]], arms: list[dict[str, Any]], seed: int,
               check: Callable[[], None]) -> None:
    """A choice's command line (--images, --seed, --out): `check` the prompts are fresh, then
    draw every set with each arm's settings on the shipped `shapes-text` and write the rows."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    check()
    torch.set_num_threads(1)
    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    rows = []
    for settings in arms:
        row = {**settings, **draw_sets(gen, sets, args.images, args.seed, **settings)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_choice(args.out, args.seed, args.images, rows)
