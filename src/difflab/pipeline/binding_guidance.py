"""Binding guidance: draw each modifier of a prompt ("red", "small") where its own noun is drawn
and not where the other nouns are, with the model's own cross-attention maps
(difflab.pipeline.attention_guidance, self-guidance). In the spirit of Rassin et al. (2023,
"Linguistic Binding in Diffusion Models"), whose loss pulls a modifier's map onto its noun's and
pushes it off the other words'; here with overlaps, which are bounded.

With overlap(p, q) = sum min(p, q) of two normalised maps (1: drawn in the same place, 0:
apart), phrases i with modifiers M_i and noun n_i, the energy is

    g = sum_i sum_{m in M_i} [ 1 - overlap(m, n_i) + APART * sum_{j != i} overlap(m, n_j) ]
        + APART * sum_{i < j} overlap(n_i, n_j).

The phrases are read from the words (:func:`find_phrases`): the prompt is split at ',', 'and',
'with', 'next to', 'beside', ... and a relation (left of, above, ...;
difflab.pipeline.relation_guidance), each part cut at a
preposition that starts a place or frame ('on the left', 'on a black background'), and in each
the words that are not determiners, numbers or frame words are kept: the last is the noun, the
others its modifiers (or, where "is", "are" or "looks" follows the noun, as in "the circle
is red", the last word before that verb is the noun and the words after it modifiers too).
Guidance applies to prompts of two phrases or more (a single object has
nothing to confuse its colour with).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from difflab.pipeline.attention_guidance import pieces_within, word_map
from difflab.pipeline.relation_guidance import FRAME_WORDS, LINKING_WORDS, RELATION_RE, WORD_RE

Tensor = torch.Tensor

BINDING_APART = 0.5  # weight of the terms that keep modifiers and nouns off the other nouns

# Words that start an object's phrase: after ',' or 'and' one of them (or a digit) says a new
# object begins; "a red and blue circle" is one object.
_STARTS = frozenset(
    "a an the one two three four five six seven eight nine ten single some several many "
    "each another".split()
)
# "there" and "here" only point ("there is a blue circle"): never a noun before "is".
_NOT_CONTENT = _STARTS | LINKING_WORDS | FRAME_WORDS | {"of", "to", "and", "or", "plus", "other",
                                                       "there", "here"}
# A verb that says what the noun before it is: "the circle is red" ends its noun at "circle".
_PREDICATE = frozenset("is are was were looks look".split())
# Words that join two objects without relating them along an axis: a list's (which must be
# followed by a new phrase), and others that always join two.
_LIST = re.compile(r",|;|\b(?:and|plus)\b", re.IGNORECASE)
_JOIN = re.compile(r"\b(?:with|beside|besides|alongside|near|next to)\b", re.IGNORECASE)
_PLACE = re.compile(r"\b(?:on|in|at|against)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Phrase:
    """One object of a prompt: its noun and its modifiers, each as a character span."""

    noun: tuple[int, int]
    modifiers: tuple[tuple[int, int], ...]


def find_phrases(prompt: str) -> list[Phrase]:
    """The prompt's objects (module docstring), in order; [] when fewer than two."""
    phrases = []
    for a, b in _parts(prompt):
        place = _PLACE.search(prompt, a, b)
        if place is not None and place.start() > a:
            b = place.start()
        found = list(WORD_RE.finditer(prompt, a, b))
        words = [m.span() for m in found if m.group().lower() not in _NOT_CONTENT]
        verb = next((m.start() for m in found if m.group().lower() in _PREDICATE
                     and words and m.start() > words[0][0]), None)
        if verb is not None:  # "the circle is red": the noun before the verb, modifiers after
            before = [w for w in words if w[0] < verb]
            phrases.append(Phrase(before[-1], tuple(before[:-1]) +
                                  tuple(w for w in words if w[0] > verb)))
        elif words:
            phrases.append(Phrase(words[-1], tuple(words[:-1])))
    return phrases if len(phrases) >= 2 else []


def _parts(text: str) -> list[tuple[int, int]]:
    """The spans of `text` between its cuts: list words before a new phrase, joining words
    and relation words."""
    lists = [m.span() for m in _LIST.finditer(text) if _starts_phrase(text, m.end())]
    cuts = sorted({*lists, *(m.span() for m in _JOIN.finditer(text)),
                   *(m.span() for m in RELATION_RE.finditer(text))})
    spans, at = [], 0
    for a, b in cuts:
        if a >= at:  # a cut inside another ("and" in no relation, but to be safe) is skipped
            spans.append((at, a))
            at = b
    spans.append((at, len(text)))
    return [(a, b) for a, b in spans if b > a]


def _starts_phrase(text: str, at: int) -> bool:
    """Whether the words after `at` begin an object's phrase (a determiner or a number)."""
    first = re.match(r"\s*(\w+)", text[at:])
    return first is not None and (first.group(1).lower() in _STARTS or first.group(1).isdigit())


def describe_binding(prompt: str, encoder: Any = None) -> str:
    """What binding guidance reads in `prompt`, for a command to print; with the `encoder`,
    also which objects are past the word pieces it reads (those are left out)."""
    phrases = find_phrases(prompt)
    if not phrases:
        return f"fewer than two objects read in {prompt!r}; it is drawn without"

    def word(span: tuple[int, int]) -> str:
        return repr(prompt[span[0]:span[1]].lower())

    said = ", ".join(
        " ".join(word(m) for m in p.modifiers) + f" on {word(p.noun)}" if p.modifiers
        else word(p.noun) for p in phrases)
    if encoder is None:
        return said
    target = binding_targets(encoder, [prompt], 0)[0]
    kept = 0 if target is None else len(target.phrases)
    if kept < len(phrases):
        past = f"past the {encoder.max_tokens} word pieces the text encoder reads"
        if target is None:
            return f"{said}: too few of them before they are {past}; it is drawn without"
        return f"{said}: {len(phrases) - kept} of them {past}, left out"
    return said


@dataclass(frozen=True)
class BindingTarget:
    """One sample's phrases as context positions: (modifier positions, noun positions)."""

    phrases: tuple[tuple[tuple[list[int], ...], list[int]], ...]


def binding_targets(encoder: Any, prompts: list[str],
                    offset: int) -> list[BindingTarget | None]:
    """Each prompt's BindingTarget (None: fewer than two objects), as positions in its text
    condition: word pieces shifted by `offset`, the tokens before them (a pooled token)."""
    targets: list[BindingTarget | None] = []
    for prompt in prompts:
        phrases = find_phrases(prompt)
        if not phrases:
            targets.append(None)
            continue
        spans = encoder.piece_spans(prompt)

        def at(span: tuple[int, int]) -> list[int]:
            return [i + offset for i in pieces_within(spans, *span)]  # noqa: B023

        read = tuple((tuple(at(m) for m in p.modifiers), at(p.noun)) for p in phrases)
        # a word cut off by truncation has no pieces: leave it out, and the phrase without
        # a noun
        read = tuple((tuple(m for m in mods if m), noun) for mods, noun in read if noun)
        targets.append(BindingTarget(read) if len(read) >= 2 else None)
    return targets


def binding_energy(target: BindingTarget, maps: Tensor) -> Tensor:
    """The energy of the module docstring on one sample's maps ``(N, L)``."""
    nouns = [word_map(maps, noun) for _, noun in target.phrases]
    total = maps.new_zeros(())
    for i, (modifiers, _) in enumerate(target.phrases):
        for positions in modifiers:
            m = word_map(maps, positions)
            total = total + 1 - torch.minimum(m, nouns[i]).sum()
            for j, other in enumerate(nouns):
                if j != i:
                    total = total + BINDING_APART * torch.minimum(m, other).sum()
    for i in range(len(nouns)):
        for j in range(i + 1, len(nouns)):
            total = total + BINDING_APART * torch.minimum(nouns[i], nouns[j]).sum()
    return total
