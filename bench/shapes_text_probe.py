"""Do MiniLM's word states say which colour goes with which shape, and which object is the
subject of a relation? The text side of shapes-text's binding and position failures (issue 18).

    python bench/shapes_text_probe.py [--out bench/results/shapes_text_probe.json]

A cross-attention layer reads a set of word states with no order of its own: to draw the
colour of "a red circle and a blue square" at the circle, the state at "circle" must carry
"red" and not "blue"; to put it on the left in "a red circle to the left of a blue square",
it must carry that it is the relation's subject. This measures both with linear probes
(multinomial logistic regression, fitted by L-BFGS as in bench/attribute_text_probe.py) on the
state at each shape word, per MiniLM layer (0: the input embeddings, word and position only;
6: the last layer, shapes-text's default; `text.layer` picks another), trained on prompts of
prompts of most colour pairs and read on prompts of pairs it never saw together. The pairs
are held out a round-robin round at a time (five rounds of three disjoint pairs: every colour
stays in the fitted prompts, with four of its five partners), and the five folds averaged:

- binding: "a C1 S1 and a C2 S2" -> the shape word's own colour (six-way); also how often the
  probe answers the *other* object's colour, the swap the scorer sees in images;
- role: "a C1 S1 REL a C2 S2" -> subject or object, and which of four relations (eight-way).

Chance is 1/6 and 1/8. A layer whose probes read near 100 % carries what binding and position
need, so a model that still swaps colours is short of training, not of text.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

import torch
from attribute_text_probe import fit_probe

from difflab.data.shapes_scene import COLOUR_NAMES, SHAPES
from difflab.hardware import describe_cpu
from difflab.models.text import MINILM_LAYERS, PretrainedTextEncoder, _minilm, tokenize

RELATIONS = ("to the left of", "to the right of", "above", "below")


def word_states(prompts: list[str], words: list[str], layer: int) -> torch.Tensor:
    """The state at the first word piece equal to each prompt's `words[i]` (every shape name
    is one word piece), after `layer` (0: the embedding layer's output)."""
    ids, _ = tokenize(prompts, 64)
    if layer == 0:
        enc = PretrainedTextEncoder(layer=1)
        enc.encode(prompts[:1])  # loads the model
        with torch.no_grad():
            hidden = _minilm("cpu").embeddings(input_ids=ids)
    else:
        hidden = PretrainedTextEncoder(layer=layer).encode(prompts).tokens[:, 1:]
    word_ids = tokenize(words, 64)[0][:, 1]  # [CLS] word [SEP]
    rows = [int((ids[i] == word_ids[i]).nonzero()[0]) for i in range(len(prompts))]
    return hidden[torch.arange(len(prompts)), torch.tensor(rows)]


def probe(x: torch.Tensor, y: list[str], test: torch.Tensor) -> tuple[list[str], list[str]]:
    """Fit on the rows not in `test`, predict the rows in it; (predicted, true) labels."""
    names = sorted(set(y))
    target = torch.tensor([names.index(v) for v in y])
    clf = fit_probe(x[~test], target[~test], len(names))
    with torch.no_grad():
        pred = clf(x[test]).argmax(1)
    return [names[i] for i in pred], [y[i] for i in torch.nonzero(test)[:, 0]]


def round_robin(names: tuple[str, ...]) -> list[list[tuple[str, str]]]:
    """The rounds of a round-robin tournament among an even number of names (the circle
    method): each round pairs every name once, and every pair meets in exactly one round."""
    rest, rounds = list(names[1:]), []
    for _ in range(len(rest)):
        line = [names[0], *rest]
        half = len(line) // 2
        rounds.append([tuple(sorted((line[i], line[-1 - i]))) for i in range(half)])
        rest = rest[-1:] + rest[:-1]
    return rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results/shapes_text_probe.json")
    p.add_argument("--seed", type=int, default=0, help="draws each prompt's relation")
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    combos = [(c1, s1, c2, s2) for c1, c2 in itertools.permutations(COLOUR_NAMES, 2)
              for s1, s2 in itertools.permutations(SHAPES, 2)]
    folds = [torch.tensor([tuple(sorted((c1, c2))) in held for c1, _, c2, _ in combos] * 2)
             for held in map(set, round_robin(COLOUR_NAMES))]
    listed = [f"a {c1} {s1} and a {c2} {s2}" for c1, s1, c2, s2 in combos]
    relations = [rng.choice(RELATIONS) for _ in combos]
    related = [f"a {c1} {s1} {r} a {c2} {s2}" for (c1, s1, c2, s2), r in zip(combos, relations,
                                                                             strict=True)]
    rows = []
    for layer in range(MINILM_LAYERS + 1):
        x = torch.cat([word_states(listed, [c[1] for c in combos], layer),
                       word_states(listed, [c[3] for c in combos], layer)])
        own = [c[0] for c in combos] + [c[2] for c in combos]
        other = [c[2] for c in combos] + [c[0] for c in combos]
        binding = swapped = role = 0.0
        for test in folds:
            pred, true = probe(x, own, test)
            others = [other[i] for i in torch.nonzero(test)[:, 0]]
            binding += sum(a == b for a, b in zip(pred, true, strict=True)) / len(true) / 5
            swapped += sum(a == b for a, b in zip(pred, others, strict=True)) / len(true) / 5
        x = torch.cat([word_states(related, [c[1] for c in combos], layer),
                       word_states(related, [c[3] for c in combos], layer)])
        roles = [f"subject {r}" for r in relations] + [f"object {r}" for r in relations]
        for test in folds:
            pred, true = probe(x, roles, test)
            role += sum(a == b for a, b in zip(pred, true, strict=True)) / len(true) / 5
        rows.append({"layer": layer, "binding": binding, "swapped": swapped, "role": role})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": describe_cpu(), "prompts": len(combos),
                               "held_out_colour_pairs": round_robin(COLOUR_NAMES), "rows": rows},
                              indent=2) + "\n")
    print("| layer | shape word -> its colour | -> the other's colour | -> role and relation |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layer']} | {r['binding']:.1%} | {r['swapped']:.1%} | {r['role']:.1%} |")


if __name__ == "__main__":
    main()
