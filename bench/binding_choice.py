"""Binding guidance on fresh two-object prompts: the choice set of
bench/results/shapes_attention_guidance/RULE_binding_2.md.

24 prompts written for that rule, 12 naming a held-out colour–shape pair (difflab.data.
shapes_scene.HELD_OUT_COLOUR_SHAPES) and 12 naming none, disjoint from the test, choosing and
development prompts; each drawn --images times with and without binding guidance, relation
guidance 30 in both arms, and scored by the GenEval-style scorer.

    python bench/binding_choice.py --out bench/results/shapes_attention_guidance/choice_2.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from difflab.data.shapes import geneval_prompts, training_prompts
from difflab.data.shapes_grammar import held_out_in_spec, parse_prompt

sys.path.insert(0, str(Path(__file__).parent))
from choice_sets import run_choice  # noqa: E402
from shapes_attention_guidance import HELD_OUT as DEV_RELATIONS  # noqa: E402
from shapes_attention_guidance import SEEN as DEV_SEEN  # noqa: E402

HELD_OUT_PAIRS = [
    "a green circle and an orange square",
    "a small green circle and a large blue triangle",
    "a purple square and an orange circle",
    "a big purple square and a small red triangle",
    "an orange triangle and a red circle",
    "a large orange triangle and a small green square",
    "a green circle and a blue square",
    "a yellow circle and a purple square",
    "a blue square and an orange triangle",
    "two green circles and a yellow triangle",
    "a purple square and two blue circles",
    "an orange triangle and two purple circles",
]
SEEN_PAIRS = [
    "a yellow circle and a blue square",
    "a small red circle and a large purple triangle",
    "an orange square and a blue circle",
    "a big green square and a small yellow triangle",
    "a blue triangle and a red circle",
    "a large purple triangle and a small orange square",
    "a green triangle and a purple circle",
    "a red circle and a green square",
    "a yellow square and a blue triangle",
    "two red circles and a purple triangle",
    "a green square and two yellow circles",
    "a red triangle and two blue squares",
]


def check_prompts() -> None:
    known = {p.text() for ps in geneval_prompts().values() for p in ps}
    known |= {t for ts in training_prompts(per_category=16).values() for t in ts}
    known |= set(DEV_RELATIONS + DEV_SEEN)
    for p in HELD_OUT_PAIRS + SEEN_PAIRS:
        assert p not in known, f"{p!r} is not fresh"
        held = [h for h in held_out_in_spec(parse_prompt(p)) if " left of " not in h]
        assert bool(held) == (p in HELD_OUT_PAIRS), (p, held)


def main() -> None:
    run_choice(__doc__, {"held_out_pairs": HELD_OUT_PAIRS, "seen_pairs": SEEN_PAIRS},
               [{"relation_guidance": 30.0, "binding_guidance": scale} for scale in (0.0, 15.0)],
               seed=5, check=check_prompts)


if __name__ == "__main__":
    main()
