"""Relation regions on fresh relation prompts: the choice set of
bench/results/shapes_relation_regions/RULE_3.md.

24 prompts written for that rule in the training captions' manner (sizes, counts, colours or
none, several wordings), 12 relating a pair of shapes the training scenes never relate on that
axis (a circle beside a square, a square above or below a triangle: difflab.data.shapes_scene
holds them out) and 12 relating pairs they do; a third of each names several objects on one
side, which regions leave to the whole prompt. Disjoint from the test, choosing (seeds 1 and 2)
and development prompts, and checked so. Each is drawn --images times with and without regions,
at the shipped sampling otherwise, and scored by the GenEval-style scorer.

    OMP_NUM_THREADS=1 python bench/relation_regions_choice.py \\
        --out bench/results/shapes_relation_regions/choice_3.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from difflab.data.shapes import geneval_prompts, training_prompts
from difflab.data.shapes_grammar import held_out_in_spec, parse_prompt

sys.path.insert(0, str(Path(__file__).parent))
from choice_sets import run_choice  # noqa: E402
from relation_regions_trial import DEV2  # noqa: E402
from shapes_attention_guidance import HELD_OUT as DEV_HELD_OUT  # noqa: E402
from shapes_attention_guidance import SEEN as DEV_SEEN  # noqa: E402

HELD_OUT_PAIRS = [
    "a purple circle to the left of a yellow square",
    "a small square right of a big circle",
    "an image of a blue circle on the right of a red square",
    "a large orange square left of a small red circle",
    "a triangle above a square",
    "a picture of a big yellow square under a little blue triangle",
    "a red triangle beneath a green square",
    "one small blue square on top of one large yellow triangle",
    "two circles to the left of a square",
    "a blue square right of two small yellow circles",
    "three triangles above a red square",
    "a big green square below three little purple triangles",
]
SEEN_PAIRS = [
    "a red circle above an orange square",
    "a small red square beneath a big yellow circle",
    "an image of a blue circle to the left of a purple triangle",
    "a large triangle right of a small circle",
    "a yellow square to the left of a blue triangle",
    "a picture of one little green triangle on the right of one big red square",
    "a purple triangle on top of an orange circle",
    "a small circle under a large square",
    "two yellow squares above a red circle",
    "a red circle left of three blue triangles",
    "three small squares to the right of a triangle",
    "a big blue triangle below two little purple circles",
]


def check_prompts() -> None:
    known = {p.text() for ps in geneval_prompts().values() for p in ps}
    for seed in (1, 2):
        known |= {t for ts in training_prompts(per_category=16, seed=seed).values() for t in ts}
    known |= set(DEV_HELD_OUT + DEV_SEEN + DEV2)
    for p in HELD_OUT_PAIRS + SEEN_PAIRS:
        assert p not in known, f"{p!r} is not fresh"
        spec = parse_prompt(p)
        assert spec.relation is not None, p
        held = held_out_in_spec(spec)
        relations = [h for h in held if spec.relation in h]
        assert bool(relations) == (p in HELD_OUT_PAIRS), (p, held)
        assert held == relations, f"{p!r} names another held-out composition: {held}"


def main() -> None:
    run_choice(__doc__, {"held_out_pairs": HELD_OUT_PAIRS, "seen_pairs": SEEN_PAIRS},
               [{"relation_regions": False}, {"relation_regions": True}],
               seed=5, check=check_prompts)


if __name__ == "__main__":
    main()
