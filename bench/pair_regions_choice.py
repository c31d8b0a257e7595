"""Relation regions for pairs ("a purple square and a green triangle") on fresh two-object
prompts: the choice set of bench/results/shapes_relation_regions/RULE_pairs.md.

24 prompts written for that rule in the training captions' manner, 12 naming a held-out
colour–shape pair (difflab.data.shapes_scene holds them out: green circles, purple squares,
orange triangles) and 12 naming none, a quarter of each naming several objects on one side
(left whole by the regions' rule). Disjoint from the test prompts, the choosing prompts (seeds
1 to 3), the development prompts and bench/binding_choice.py's, and checked so. Each is drawn
--images times with relation regions off and on (the shipped sampling otherwise: relation
guidance 30, binding guidance 15), and scored by the GenEval-style scorer.

    OMP_NUM_THREADS=1 python bench/pair_regions_choice.py \\
        --out bench/results/shapes_relation_regions/choice_pairs.json

It ran on the library of commit 8e059b2, whose relation regions also drew pairs; that was not
adopted and was removed, so on the library as it is both arms draw a pair alike (a record,
not a reproduction: `git checkout 8e059b2` to rerun it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from difflab.data.shapes import geneval_prompts, training_prompts
from difflab.data.shapes_grammar import held_out_in_spec, parse_prompt

sys.path.insert(0, str(Path(__file__).parent))
import binding_choice  # noqa: E402
import relation_regions_choice  # noqa: E402
from choice_sets import run_choice  # noqa: E402
from relation_regions_trial import DEV2  # noqa: E402
from shapes_attention_guidance import HELD_OUT as DEV_HELD_OUT  # noqa: E402
from shapes_attention_guidance import SEEN as DEV_SEEN  # noqa: E402

HELD_OUT_PAIRS = [
    "a green circle and a red triangle",
    "a small purple square and a large yellow circle",
    "an orange triangle and a blue square",
    "a big red square and a little green circle",
    "a picture of a purple square and a blue triangle",
    "a yellow square and an orange triangle",
    "an image of a large green circle and a small red square",
    "a purple square, and a yellow triangle",
    "a small orange triangle and a big blue circle",
    "two red squares and a green circle",
    "a purple square and three yellow triangles",
    "two blue circles and an orange triangle",
]
SEEN_PAIRS = [
    "a blue circle and a yellow triangle",
    "a small green square and a large red circle",
    "one orange circle and one purple triangle",
    "a big yellow square and a little blue circle",
    "a picture of a red square and a green triangle",
    "one purple triangle and one blue circle",
    "an image of a large orange circle and a small yellow square",
    "a green square, and a red triangle",
    "a small blue triangle and a big purple circle",
    "two green squares and a yellow circle",
    "a red square and three blue triangles",
    "two purple circles and a yellow triangle",
]


def check_prompts() -> None:
    known = {p.text() for ps in geneval_prompts().values() for p in ps}
    for seed in (1, 2, 3):
        known |= {t for ts in training_prompts(per_category=16, seed=seed).values() for t in ts}
    known |= set(DEV_HELD_OUT + DEV_SEEN + DEV2 + binding_choice.HELD_OUT_PAIRS
                 + binding_choice.SEEN_PAIRS + relation_regions_choice.HELD_OUT_PAIRS
                 + relation_regions_choice.SEEN_PAIRS)
    for p in HELD_OUT_PAIRS + SEEN_PAIRS:
        assert p not in known, f"{p!r} is not fresh"
        spec = parse_prompt(p)
        assert spec.relation is None and len(spec.groups) == 2, p
        held = held_out_in_spec(spec)
        assert all(" " in h and not h[0].isdigit() for h in held), (p, held)
        assert bool(held) == (p in HELD_OUT_PAIRS), (p, held)


def main() -> None:
    run_choice(__doc__, {"held_out_pairs": HELD_OUT_PAIRS, "seen_pairs": SEEN_PAIRS},
               [{"relation_regions": False}, {"relation_regions": True}],
               seed=6, check=check_prompts)


if __name__ == "__main__":
    main()
