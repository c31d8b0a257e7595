"""Words for shapes scenes: a structured prompt (:class:`PromptSpec`), the captions a scene is
described by, and a parser that turns a prompt of the grammar back into its spec.

The grammar (numbers as words, a size and a colour before the noun):

    prompt   := [frame] list | [frame] phrase RELATION phrase
    list     := phrase | phrase ("," phrase)* "and" phrase
    phrase   := QUANTITY [SIZE] [COLOUR] SHAPE [PLACE]   "a small red circle", "three blue
                                                         squares at the top"
    QUANTITY := a | an | one | a single | two | three | four
    PLACE    := on the left | on the right | at the top | at the bottom (and synonyms)
    RELATION := (to the | on the)? left of | (to the | on the)? right of | above | over |
                on top of | below | under | beneath
    frame    := "a picture of ..." | "an image of ..." | "... on a black background"
                (the parser also reads "a photo of ...", "an image with ...", "... on black",
                digits for numbers and plurals after "a": it is lenient, the captions are not)

A spec means a whole scene: each phrase asks for exactly ``count`` objects of its shape (and
colour and size, when named), nothing else is in the image, and a relation must hold between
every object of the first phrase and every object of the second (shapes_scene.relation_holds),
and a phrase with a place has all its objects in that half of the image
(shapes_scene.place_holds).
Captions are only written when true of their scene by that reading, and the scorer checks
images against it, so a caption of a training image is also a prompt the scorer can score.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass

from .captions import quote_prompt
from .shapes_scene import (
    AXIS,
    COLOUR_NAMES,
    HELD_OUT_COLOUR_SHAPES,
    HELD_OUT_COUNTS,
    HELD_OUT_RELATIONS,
    INVERSE,
    OPPOSITE_PLACE,
    PLACE_AXIS,
    PLACES,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    clear_place,
    clear_relation,
)

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {s: s + "s" for s in SHAPES}
# The first word of each tuple is the canonical one (test prompts use only those).
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
PLACE_WORDS = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "in the upper half"),
    "bottom": ("at the bottom", "near the bottom", "in the lower half"),
}
ONE_WORDS = ("a", "one", "a single")
FRAMES = ("{}", "{}", "{}", "a picture of {}", "an image of {}", "{} on a black background")

CATEGORIES = (
    "single_object",
    "two_object",
    "counting",
    "colours",
    "position",
    "attribute_binding",
)


@dataclass(frozen=True)
class ObjectSpec:
    """One phrase: ``count`` objects of ``shape``; colour, size and place (the half of the
    image its objects stand in) None when not named."""

    shape: str
    count: int = 1
    colour: str | None = None
    size: str | None = None
    place: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r}: allowed {', '.join(SHAPES)}")
        if self.colour is not None and self.colour not in COLOUR_NAMES:
            raise ValueError(f"colour {self.colour!r}: allowed {', '.join(COLOUR_NAMES)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"size {self.size!r}: allowed {', '.join(SIZES)}")
        if self.place is not None and self.place not in PLACES:
            raise ValueError(f"place {self.place!r}: allowed {', '.join(PLACES)}")
        if isinstance(self.count, bool) or self.count not in NUMBER_WORDS:
            raise ValueError(f"count {self.count!r}: allowed 1..{max(NUMBER_WORDS)}")

    def matches(self, shape: str, colour: str, size: str) -> bool:
        """Whether one object with these attributes fits this phrase (where it stands is
        checked apart, shapes_scene.place_holds)."""
        return shape == self.shape and self.colour in (None, colour) and self.size in (None, size)

    def words(self, rng: random.Random | None = None) -> str:
        """The phrase; canonical ("a red circle") without ``rng``, else a random wording."""
        if self.count == 1:
            quantity = "a" if rng is None else rng.choice(ONE_WORDS)
        else:
            quantity = NUMBER_WORDS[self.count]
        words = [quantity]
        if self.size is not None:
            options = SIZE_WORDS[self.size]
            words.append(options[0] if rng is None else rng.choice(options))
        if self.colour is not None:
            words.append(self.colour)
        words.append(self.shape if self.count == 1 else PLURALS[self.shape])
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        if self.place is not None:
            options = PLACE_WORDS[self.place]
            words.append(options[0] if rng is None else rng.choice(options))
        return " ".join(words)


def _phrase_order(g: ObjectSpec) -> tuple:
    return (g.shape, g.colour or "", g.size or "", g.count, g.place or "")


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: phrases, and a relation between the first two, if any."""

    groups: tuple[ObjectSpec, ...]
    relation: str | None = None  # groups[0] RELATION groups[1]

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a prompt needs at least one phrase")
        if self.relation is not None:
            if self.relation not in RELATIONS:
                raise ValueError(f"relation {self.relation!r}: allowed {', '.join(RELATIONS)}")
            if len(self.groups) != 2:
                raise ValueError(f"a relation joins exactly two phrases, got {len(self.groups)}")

    def canonical(self) -> PromptSpec:
        """The same request with a list's phrases in a fixed order: "a square and a circle"
        and "a circle and a square" have one canonical spec (a relation's order matters)."""
        if self.relation is not None:
            return self
        return PromptSpec(tuple(sorted(self.groups, key=_phrase_order)))

    @property
    def num_objects(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def category(self) -> str:
        """The GenEval category the prompt belongs to ("other" for the grammar's longer
        descriptions, such as three phrases)."""
        g = self.groups
        if self.relation is not None or any(p.place is not None for p in g):
            return "position"
        if len(g) == 1:
            if g[0].count > 1:
                return "counting"
            return "single_object" if g[0].colour is None else "colours"
        if len(g) == 2 and g[0].count == g[1].count == 1:
            if g[0].colour is None and g[1].colour is None:
                return "two_object"
            if g[0].colour is not None and g[1].colour is not None:
                return "attribute_binding"
        return "other"

    def text(self, rng: random.Random | None = None) -> str:
        """The prompt: canonical wording without ``rng`` (what test prompts use), else one
        of the grammar's wordings (order of a list, synonyms, a frame)."""
        if self.relation is not None:
            options = RELATION_WORDS[self.relation]
            word = options[0] if rng is None else rng.choice(options)
            body = f"{self.groups[0].words(rng)} {word} {self.groups[1].words(rng)}"
        else:
            order = list(range(len(self.groups)))
            if rng is not None:
                rng.shuffle(order)
            phrases = [self.groups[i].words(rng) for i in order]
            body = (
                phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
            )
        if rng is None:
            return body
        return rng.choice(FRAMES).format(body)


# ---------------------------------------------------------------------------------------------
# Held-out compositions in words


def held_out_in_spec(spec: PromptSpec) -> list[str]:
    """The held-out compositions (shapes_scene.HELD_OUT_*) a prompt asks for, in words;
    empty when every part of it occurs in training."""
    found = [
        f"a {g.colour} {g.shape}"
        for g in spec.groups
        if (g.colour, g.shape) in HELD_OUT_COLOUR_SHAPES
    ]
    totals: Counter = Counter()
    for g in spec.groups:
        totals[g.shape] += g.count
    for shape, n in sorted(HELD_OUT_COUNTS):
        if totals[shape] == n or any(g.shape == shape and g.count == n for g in spec.groups):
            found.append(f"{n} {shape}s")
    if spec.relation is not None:
        a, b = spec.groups[0].shape, spec.groups[1].shape
        if (frozenset({a, b}), AXIS[spec.relation]) in HELD_OUT_RELATIONS:
            found.append(f"a {a} {spec.relation} a {b}")
    # Two phrases in opposite halves ("a circle on the left and a square on the right") ask
    # for the pair apart along that axis as much as a relation does.
    for g, h in itertools.combinations(spec.groups, 2):
        if g.place is not None and h.place == OPPOSITE_PLACE[g.place]:
            if (frozenset({g.shape, h.shape}), PLACE_AXIS[g.place]) in HELD_OUT_RELATIONS:
                found.append(
                    f"a {g.shape} {PLACE_WORDS[g.place][0]} and a {h.shape} "
                    f"{PLACE_WORDS[h.place][0]}"
                )
    return found


# ---------------------------------------------------------------------------------------------
# Captions of a scene


def _groups(scene: Scene, by_colour: bool) -> dict[tuple, list[int]]:
    """Object indices grouped by (colour, shape), or by shape alone."""
    out: dict[tuple, list[int]] = {}
    for i, o in enumerate(scene.objects):
        out.setdefault((o.colour, o.shape) if by_colour else (None, o.shape), []).append(i)
    return out


def _phrase(scene: Scene, key: tuple, members: list[int], with_size: bool) -> ObjectSpec:
    sizes = {scene.objects[i].size for i in members}
    size = sizes.pop() if with_size and len(sizes) == 1 else None
    return ObjectSpec(shape=key[1], count=len(members), colour=key[0], size=size)


def scene_meanings(scene: Scene) -> list[PromptSpec]:
    """Every spec that describes the whole scene truthfully: its objects listed with and
    without colours, with and without sizes (when a phrase's objects share one), and, for a
    scene of two phrases whose objects are all clearly apart one way, that relation, in
    both orders ("A left of B", "B right of A")."""
    specs: list[PromptSpec] = []
    for by_colour in (True, False):
        groups = _groups(scene, by_colour)
        for with_size in (False, True):
            phrases = tuple(_phrase(scene, k, m, with_size) for k, m in groups.items())
            specs.append(PromptSpec(phrases))
            if len(phrases) != 2:
                continue
            ma, mb = groups.values()
            for relation in RELATIONS:
                if all(
                    clear_relation(
                        (scene.objects[i].x, scene.objects[i].y),
                        (scene.objects[j].x, scene.objects[j].y),
                        relation,
                        scene.objects[i].extent,
                        scene.objects[j].extent,
                    )
                    for i in ma
                    for j in mb
                ):
                    specs.append(PromptSpec(phrases, relation))
                    specs.append(PromptSpec(phrases[::-1], INVERSE[relation]))
    return list(dict.fromkeys(specs))


def _clear_places(scene: Scene, members: list[int]) -> list[str]:
    """The places (halves of the image) that every one of ``members`` lies wholly in."""
    objects = [scene.objects[i] for i in members]
    return [p for p in PLACES if all(clear_place(o.x, o.y, p, o.extent) for o in objects)]


def placed_meanings(scene: Scene) -> list[PromptSpec]:
    """The scene's lists (:func:`scene_meanings` without relations) with places: each phrase
    whose objects all lie in one half of the image, placed there alone ("a red circle on the
    left and a blue square"), and every phrase placed at once when all of them lie in halves
    along one axis ("a red circle on the left and a blue square on the right")."""
    specs: list[PromptSpec] = []
    for by_colour in (True, False):
        groups = _groups(scene, by_colour)
        for with_size in (False, True):
            phrases = [_phrase(scene, k, m, with_size) for k, m in groups.items()]
            places = [_clear_places(scene, m) for m in groups.values()]
            for i, options in enumerate(places):
                for place in options:
                    one = list(phrases)
                    one[i] = dataclasses.replace(phrases[i], place=place)
                    specs.append(PromptSpec(tuple(one)))
            if len(phrases) < 2:
                continue
            for axis in ("horizontal", "vertical"):
                chosen = [[p for p in ps if PLACE_AXIS[p] == axis] for ps in places]
                if all(chosen):
                    placed = (
                        dataclasses.replace(g, place=ps[0])
                        for g, ps in zip(phrases, chosen, strict=True)
                    )
                    specs.append(PromptSpec(tuple(placed)))
    return list(dict.fromkeys(specs))


def scene_captions(
    scene: Scene,
    rng: random.Random,
    n: int = 8,
    exclude: frozenset[str] | set[str] = frozenset(),
    places: float = 0.0,
) -> list[str]:
    """Up to ``n`` distinct captions of ``scene`` in varied wording, none in ``exclude``
    (the test prompts). Relation captions, when the scene allows one, make up about half:
    they are the rarer and the harder kind to learn. ``places`` (0 to 1) is the share of
    captions that say where in the picture a phrase stands (:func:`placed_meanings`), when
    the scene allows one; at 0 the captions are exactly those of earlier versions."""
    meanings = scene_meanings(scene)
    plain = [m for m in meanings if m.relation is None]
    related = [m for m in meanings if m.relation is not None]
    placed = placed_meanings(scene) if places > 0 else []
    out: dict[str, None] = {}
    for _ in range(3 * n):  # a few spare draws for repeats and excluded wordings
        if placed and rng.random() < places:
            pool = placed
        else:
            pool = related if related and rng.random() < 0.5 else plain
        text = rng.choice(pool).text(rng)
        if text not in exclude:
            out.setdefault(text)
        if len(out) == n:
            break
    return list(out)


# ---------------------------------------------------------------------------------------------
# Parsing


_NUMBERS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4}
_NUMBERS.update({str(k): k for k in NUMBER_WORDS})
_TOO_MANY = {"five", "six", "seven", "eight", "nine", "ten", "many", "several", "dozens",
             *map(str, range(max(NUMBER_WORDS) + 1, 100))}
_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_SHAPE_OF = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
# Read, never written: wordings a prompt set may use that captions do not.
_READ_ONLY_RELATION_WORDS = {"on the left side of": "left of", "on the right side of": "right of",
                             "underneath": "below"}
_RELATION_OF = {w: r for r, ws in RELATION_WORDS.items() for w in ws} | _READ_ONLY_RELATION_WORDS
# Longest wordings first, so that "to the left of" is not read as "left of" plus junk.
_RELATION_RE = re.compile(
    r"\s(" + "|".join(re.escape(w) for w in sorted(_RELATION_OF, key=len, reverse=True)) + r")\s"
)
# A phrase's last words may name its place; longest first, so "on the left side" is not read
# as "on the left" plus junk.
_PLACE_ENDINGS = sorted(
    ((w.split(), p) for p, ws in PLACE_WORDS.items() for w in ws), key=lambda e: -len(e[0])
)
_PREFIXES = ("a picture of ", "an image of ", "a photo of ", "an image with ", "a picture with ")
_SUFFIXES = (" on a black background", " on black")

GRAMMAR_HELP = (
    "expected phrases like 'a small red circle' or 'three blue squares' "
    "(numbers a/one/two/three/four; sizes small/large; colours "
    + "/".join(COLOUR_NAMES)
    + "; shapes "
    + "/".join(SHAPES)
    + "), each perhaps with a place (on the left, on the right, at the top, at the "
    "bottom), joined by ',' / 'and', or two phrases joined by a relation (left of, right "
    "of, above, below)"
)


def _parse_phrase(words: list[str], prompt: str) -> ObjectSpec:
    def bad(why: str) -> ValueError:
        return ValueError(
            f"cannot read {quote_prompt(' '.join(words))} in prompt {quote_prompt(prompt)}: "
            f"{why}; {GRAMMAR_HELP}"
        )

    if not words:
        raise bad("empty phrase")
    if words[:2] == ["a", "single"]:
        words = ["one", *words[2:]]
    place = None
    for ending, where in _PLACE_ENDINGS:
        if len(words) > len(ending) and words[-len(ending) :] == ending:
            words, place = words[: -len(ending)], where
            break
    if words[0] in _TOO_MANY:  # a number word, beyond what a scene holds
        raise bad(f"{words[0]!r} is more than the shapes world draws of one shape: at most "
                  f"{NUMBER_WORDS[max(NUMBER_WORDS)]}")
    if words[0] not in _NUMBERS:
        raise bad(f"it must start with a number word, not {words[0]!r}")
    count, rest = _NUMBERS[words[0]], words[1:]
    if not rest or rest[-1] not in _SHAPE_OF:
        raise bad(f"it must end in a shape, not {rest[-1] if rest else 'nothing'!r}")
    shape, colour, size = _SHAPE_OF[rest[-1]], None, None
    for w in rest[:-1]:
        if w in COLOUR_NAMES and colour is None:
            colour = w
        elif w in _SIZE_OF and size is None:
            size = _SIZE_OF[w]
        else:
            raise bad(f"unexpected word {w!r}")
    return ObjectSpec(shape, count, colour, size, place)


def parse_prompt(prompt: str) -> PromptSpec:
    """The :class:`PromptSpec` of a prompt of the grammar (module docstring), whatever its
    wording. ValueError naming the part it cannot read and what the grammar allows."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().strip().rstrip(".!?").replace(",", " , ").split())
    for prefix in _PREFIXES:
        text = text.removeprefix(prefix)
    for suffix in _SUFFIXES:
        text = text.removesuffix(suffix)
    relations = list(_RELATION_RE.finditer(f" {text} "))
    if len(relations) > 1:
        raise ValueError(
            f"prompt {quote_prompt(prompt)} has {len(relations)} relations; the grammar allows one"
        )
    if relations:
        m = relations[0]
        left, right = f" {text} "[: m.start()].split(), f" {text} "[m.end() :].split()
        # a comma at the relation is a pause ("a red circle, left of a blue square")
        left = left[:-1] if left[-1:] == [","] else left
        right = right[1:] if right[:1] == [","] else right
        if "," in left + right or "and" in left + right:
            raise ValueError(f"prompt {quote_prompt(prompt)}: a relation joins two single phrases")
        for side, words in (("before", left), ("after", right)):
            if not words:
                raise ValueError(
                    f"cannot read prompt {quote_prompt(prompt)}: nothing {side} "
                    f"{m[0].strip()!r}; a relation joins two phrases, as in 'a red circle "
                    "left of a blue square'")
        groups = (_parse_phrase(left, prompt), _parse_phrase(right, prompt))
        return PromptSpec(groups, _RELATION_OF[m[1]])
    phrases: list[list[str]] = [[]]
    for word in text.split():
        if word in (",", "and"):
            phrases.append([])  # ", and" leaves an empty phrase, dropped below
        else:
            phrases[-1].append(word)
    kept = [p for p in phrases if p] or [[]]
    return PromptSpec(tuple(_parse_phrase(p, prompt) for p in kept))
