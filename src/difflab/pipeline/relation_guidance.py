"""Relation guidance: steer the two objects of a prompt such as "a red circle to the left of a
blue square" to the sides it names, with the model's own cross-attention maps
(difflab.pipeline.attention_guidance, self-guidance).

The centroid of a word's map along the relation's axis is a differentiable summary of where the
word is drawn. The energy is

    g = relu(m - gap),

where gap is the second object's centroid minus the first's along the axis, in image widths
(positive when the relation holds) and m = RELATION_MARGIN asks for a clear gap.

What a prompt's relation is, is read from its words (:func:`find_relation`): two phrases
joined by left of / right of / above / over / on top of / below / under / beneath (with "to
the" and "on the" before left and right); each object is the last word of its phrase (linking
words such as "sitting" or "placed" before the relation skipped), and guidance follows all of
its word pieces. A prompt without such a relation is sampled as it would be without guidance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from difflab.pipeline.attention_guidance import pieces_within, word_map

Tensor = torch.Tensor

RELATION_MARGIN = 0.3  # image widths between the two objects' centroids

# relation words -> (axis, sign): axis 1 = across the columns (left-right), 0 = down the rows;
# sign +1 when the first object comes first along the axis (left of, above).
_RELATIONS = {
    "to the left of": (1, 1), "on the left of": (1, 1), "on the left side of": (1, 1),
    "to the left side of": (1, 1), "left of": (1, 1),
    "to the right of": (1, -1), "on the right of": (1, -1), "on the right side of": (1, -1),
    "to the right side of": (1, -1), "right of": (1, -1),
    "on top of": (0, 1), "above": (0, 1), "over": (0, 1),
    "underneath": (0, -1), "beneath": (0, -1), "below": (0, -1), "under": (0, -1),
}
# Patterns match the prompt as written (IGNORECASE), so that positions stay those of the
# tokenizer's character spans; a word is a run of letters, accented ones included.
RELATION_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _RELATIONS), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# Where the second phrase ends: a frame or another clause after it.
_PHRASE_END = re.compile(r"\s*(?:,|;|\band\b|\bon\b|\bin\b|\bwith\b|\bat\b)", re.IGNORECASE)
WORD_RE = re.compile(r"[^\W\d_]+")
# Words between an object and its relation that are not the object ("a dog sitting under",
# "the circle is directly above").
LINKING_WORDS = frozenset(
    "is are was were be sits sit sitting stands stand standing lies lying placed positioned "
    "located drawn shown floating hanging that which who just right directly slightly far "
    "somewhat exactly a an the in on at of to".split()
)
# Words that deny the relation after them ("is not left of", "isn't above": the tokenizer of
# words splits "isn't" into "isn" and "t"): such a prompt relates nothing to steer towards.
NEGATIONS = frozenset("not no never isn aren wasn weren doesn don didn t cannot".split())
# What a picture is, not an object in it: "a circle on the left side of the picture" places
# one object, it relates none.
FRAME_WORDS = frozenset("picture image photo photograph drawing background frame canvas scene "
                        "page view".split())


@dataclass(frozen=True)
class Relation:
    """Two object words of a prompt and where the first must be against the second; with the
    character spans of those two words in the prompt (the same word may occur elsewhere in it,
    as another object: "a red circle left of a blue square and a green square")."""

    first: str
    second: str
    axis: int
    sign: int
    # not compared: a relation is its words, wherever the prompt says them
    first_span: tuple[int, int] = field(default=(0, 0), compare=False)
    second_span: tuple[int, int] = field(default=(0, 0), compare=False)


def find_relation(prompt: str) -> Relation | None:
    """The relation a prompt states between two objects (module docstring), or None."""
    match = RELATION_RE.search(prompt)
    if match is None:
        return None
    before = list(WORD_RE.finditer(prompt, 0, match.start()))
    while before and before[-1].group().lower() in LINKING_WORDS | NEGATIONS:
        if before[-1].group().lower() in NEGATIONS:  # "is not left of": no relation to steer
            return None
        before.pop()
    after_text = prompt[match.end():]
    ends = [m.start() for m in (_PHRASE_END.search(after_text), RELATION_RE.search(after_text))
            if m is not None]  # a clause, a frame, or a second relation ends the phrase
    after = list(WORD_RE.finditer(prompt, match.end(),
                                  match.end() + min(ends, default=len(after_text))))
    if not before or not after:
        return None
    first, second = before[-1], after[-1]
    if {first.group().lower(), second.group().lower()} & FRAME_WORDS:
        return None
    return Relation(first.group().lower(), second.group().lower(),
                    *_RELATIONS[match.group(1).lower()], first.span(), second.span())


def describe_relation(prompt: str, encoder: Any = None) -> str:
    """What guidance reads in `prompt`, for a command to print; with the `encoder`, also
    whether its words are within the word pieces the encoder reads."""
    rel = find_relation(prompt)
    if rel is None:
        return (f"no relation read in {prompt!r} (two objects joined by left of, right of, "
                "above, below, on top of, under, ...); it is drawn without")
    where = {(1, 1): "left of", (1, -1): "right of", (0, 1): "above", (0, -1): "below"}
    said = f"{rel.first!r} {where[rel.axis, rel.sign]} {rel.second!r}"
    if encoder is not None and relation_targets(encoder, [prompt], 0)[0] is None:
        return (f"{said} is past the {encoder.max_tokens} word pieces the text encoder reads; "
                "it is drawn without")
    return said


@dataclass(frozen=True)
class RelationTarget:
    """One sample's relation as context positions of its two objects' word pieces."""

    first: list[int]
    second: list[int]
    axis: int
    sign: int


def relation_energy(target: RelationTarget, maps: Tensor) -> Tensor:
    """relu(margin - gap) (module docstring) on one sample's maps ``(N, L)`` of a square
    side x side grid."""
    side = round(maps.shape[0] ** 0.5)
    pos = (torch.arange(side, device=maps.device, dtype=maps.dtype) + 0.5) / side
    centres = []
    for words in (target.first, target.second):
        along = word_map(maps, words).reshape(side, side).sum(dim=1 - target.axis)
        centres.append((along * pos).sum())
    gap = target.sign * (centres[1] - centres[0])
    return torch.relu(RELATION_MARGIN - gap)


def relation_targets(encoder: Any, prompts: list[str],
                     offset: int) -> list[RelationTarget | None]:
    """Each prompt's RelationTarget (None: no relation, or one cut off by truncation), as
    positions in its text condition: word pieces shifted by `offset`, the tokens before them
    (a pooled sentence token)."""
    targets: list[RelationTarget | None] = []
    for prompt in prompts:
        rel = find_relation(prompt)
        if rel is None:
            targets.append(None)
            continue
        spans = encoder.piece_spans(prompt)
        first = pieces_within(spans, *rel.first_span)
        second = pieces_within(spans, *rel.second_span)
        if not first or not second:  # cut off by truncation
            targets.append(None)
            continue
        targets.append(RelationTarget([i + offset for i in first],
                                      [i + offset for i in second], rel.axis, rel.sign))
    return targets
