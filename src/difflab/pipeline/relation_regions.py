"""Relation regions: draw each phrase of "a red circle to the left of a blue square" in its own
region of the picture first, then the whole prompt over the whole picture.

While the noise level sigma (Karras et al.'s sigma_t / alpha_t) is above REGIONS_SIGMA, the
steps where a scene's layout is decided, each of the relation's two phrases is denoised on its
own region of x_t with its own text and the run's guidance: the side of the picture the
relation gives it ("a red circle" the left, "a blue square" the right), REGION_SHARE of the
picture along the relation's axis and all of it across, the two regions overlapping in the
middle. Where they overlap, their predictions are averaged: the least-squares joint of the
regions' steps (MultiDiffusion, Bar-Tal et al. 2023, eq. 5). An object can only be drawn
inside its own region, so the relation holds by construction, also between objects the model
never saw related; below REGIONS_SIGMA the whole prompt on the whole picture (with any other
guidance) finishes the two regions as one picture. This is layout-grounded generation (Lian et
al. 2023, "LLM-grounded Diffusion"), with the layout read from the prompt's words instead of
asked of a language model, and without their per-box masks.

A region is a crop of x_t, so the network must take non-square inputs (a UNet does). The
regions overlap because halves that only meet leave a seam that the rest of sampling does not
close; wider ones let both phrases draw in the shared middle, where the average fades each
(BENCHMARKS.md, "Relation regions").

Regions apply to a prompt that is one relation between two single objects and nothing else
but a frame ("... on a black background", which each region's phrase then says too;
:func:`region_phrases`): a third object ("... and a green triangle"), a phrase of several
("two blue squares"), or another clause leaves the prompt drawn as without them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from difflab.data.captions import quote_prompt
from difflab.diffusion.denoiser import Denoiser, Prediction
from difflab.diffusion.process import as_time
from difflab.pipeline.relation_guidance import (
    FRAME_WORDS,
    LINKING_WORDS,
    NEGATIONS,
    RELATION_RE,
    WORD_RE,
    find_relation,
)

Tensor = torch.Tensor

REGIONS_SIGMA = 1.0  # draw by regions while sigma is above this
REGION_SHARE = 0.625  # a region's share of the picture along the relation's axis

# Where the first phrase starts: after the last clause break before its object.
_CLAUSE_BREAK = re.compile(r",|;|\band\b|\bwith\b|\bplus\b", re.IGNORECASE)
# Words a prompt may hold outside its two phrases and still be only the relation: "there is",
# "a picture of", "in the image".
_FREE_WORDS = LINKING_WORDS | FRAME_WORDS | {"there", "here", "of", "showing", "shows", "with"}
# A frame clause ending the prompt ("on a black background", "in the picture"): it belongs to
# the whole picture, so each region's phrase says it too.
_FRAME_CLAUSE = re.compile(
    r"\s*,?\s*(?P<clause>(?:on|in|against|with|at)\b[^,;.!?]*?\b(?:"
    + "|".join(sorted(FRAME_WORDS, key=len, reverse=True)) + r")s?\b)\s*[.!?]*\s*$",
    re.IGNORECASE)
# Words that make a phrase more than one object. Such a phrase needs a layout of its own
# within its region: on the development prompts of several objects, regions drew 5 of 32
# images right against 15 without (BENCHMARKS.md, "Relation regions").
_MANY = frozenset("two three four five six seven eight nine ten several many some pair "
                  "couple both few".split())
# Words that make a phrase something other than one object: a second object joined some other
# way than a clause break ("a circle or a triangle", "a circle near a triangle"), or a
# negation ("a circle not left of a square" must not be drawn on the left).
_NOT_ONE = NEGATIONS | frozenset("or nor without except but than versus vs near beside "
                                 "behind inside between among around next".split())
# Words that begin an object's phrase; two of them in a phrase are two objects, unless the
# first begins a frame ("a picture of a circle").
_ARTICLES = frozenset("a an the one single each another".split())


@dataclass(frozen=True)
class RegionPhrases:
    """A relation's two phrases as text, and where the first goes against the second."""

    first: str
    second: str
    axis: int  # 0: down the rows (above, below); 1: across the columns (left of, right of)
    sign: int  # +1: the first phrase comes first along the axis (left of, above)


def region_phrases(prompt: str) -> RegionPhrases | None:
    """The two phrases of a prompt that is one relation and nothing else (module docstring),
    or None. The first phrase runs from the clause break before its object word to that word
    ("a small red circle" in "there is a small red circle to the left of ..."), the second
    from the relation to its object word."""
    rel, match = find_relation(prompt), RELATION_RE.search(prompt)
    if rel is None or match is None:
        return None
    first_end, end = rel.first_span[1], rel.second_span[1]
    start = max((m.end() for m in _CLAUSE_BREAK.finditer(prompt, 0, rel.first_span[0])),
                default=0)
    frame = _FRAME_CLAUSE.match(prompt, end)  # "on a black background": said to both phrases
    tail = "" if frame else prompt[end:]
    outside = prompt[:start] + " " + prompt[first_end:match.start()] + " " + tail
    if any(w.group().lower() not in _FREE_WORDS for w in WORD_RE.finditer(outside)):
        return None
    first, second = prompt[start:first_end].strip(), prompt[match.end():end].strip()
    if not first or not second or not (names_one(first, rel.first)
                                       and names_one(second, rel.second)):
        return None
    if frame:
        first, second = (f"{phrase} {frame.group('clause')}" for phrase in (first, second))
    return RegionPhrases(first, second, rel.axis, rel.sign)


def names_one(phrase: str, noun: str) -> bool:
    """Whether a phrase names a single object: no number above one ("two", "3", "several"),
    a noun that does not read as a plural ("circles"; "glass" and "bus" are single), and no
    second object or negation in it ("a circle or a triangle", "a circle not")."""
    words = [w.lower() for w in re.findall(r"[^\W_]+", phrase)]
    if set(words) & (_MANY | _NOT_ONE) or any(w.isdigit() and int(w) > 1 for w in words):
        return False
    starts = [i for i, w in enumerate(words) if w in _ARTICLES  # "a single": one start
              and not (i > 0 and words[i - 1] in _ARTICLES)
              and not (i + 1 < len(words) and words[i + 1] in FRAME_WORDS)]
    if len(starts) > 1:
        return False
    return not (noun.endswith("s") and not noun.endswith(("ss", "us", "is")))


def describe_regions(prompt: str) -> str:
    """What relation regions read in `prompt`, for a command to print."""
    read = region_phrases(prompt)
    if read is None:
        return (f"{quote_prompt(prompt)} is not one relation between two single objects and "
                "nothing else; it is drawn whole")
    sides = {(1, 1): ("left", "right"), (1, -1): ("right", "left"),
             (0, 1): ("top", "bottom"), (0, -1): ("bottom", "top")}[read.axis, read.sign]
    return (f"{quote_prompt(read.first)} on the {sides[0]}, {quote_prompt(read.second)} on the "
            f"{sides[1]}")


def region_slices(side: int, phrases: RegionPhrases) -> tuple[slice, slice]:
    """The first and second phrase's regions along the relation's axis of a picture `side`
    long: the first REGION_SHARE of it and the last, in the relation's order."""
    width = min(side, max(-(-side // 2), round(side * REGION_SHARE)))
    low, high = slice(0, width), slice(side - width, side)
    return (low, high) if phrases.sign > 0 else (high, low)


# Builds the denoiser of some phrases (one per sample of a sub-batch), guided as the run is.
PhraseDenoiser = Callable[[list[str], list[int]], Denoiser]


class RelationRegionsDenoiser:
    """Relation regions (module docstring) around the run's denoiser `whole`. `phrases` holds
    each sample's RegionPhrases (None: drawn by `whole` alone); `phrase_denoiser` builds the
    denoiser of a list of phrase texts for the listed samples of the batch (their negative
    prompts, if any, go with them). `model_shape` is (C, H, W)."""

    def __init__(self, whole: Denoiser, phrases: list[RegionPhrases | None],
                 phrase_denoiser: PhraseDenoiser, model_shape: tuple[int, ...]):
        self.whole, self.process = whole, whole.process
        # one entry per (axis, region): the samples drawing a phrase there, and their denoiser
        groups: dict[tuple[int, int, int], tuple[list[int], list[str]]] = {}
        for b, read in enumerate(phrases):
            if read is None:
                continue
            for region, text in zip(region_slices(model_shape[1 + read.axis], read),
                                    (read.first, read.second), strict=True):
                samples, texts = groups.setdefault((read.axis, region.start, region.stop),
                                                   ([], []))
                samples.append(b)
                texts.append(text)
        self.regions = [(axis, slice(start, stop), torch.tensor(samples),
                         phrase_denoiser(texts, samples))
                        for (axis, start, stop), (samples, texts) in groups.items()]
        self.drawn = torch.tensor([read is not None for read in phrases])

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        tt = as_time(t, x.shape[0], x.device)
        # per sample: by regions while its own noise level is above REGIONS_SIGMA
        active = self.drawn.to(x.device) & (self.process.sigma_ve(tt).to(x.device)
                                            > REGIONS_SIGMA)
        if not bool(active.any()):
            return self.whole(x, t)
        x0, eps, count = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
        for axis, region, samples, den in self.regions:
            rows = samples.to(x.device)
            crop = (slice(None), slice(None), region) if axis == 0 else \
                (slice(None), slice(None), slice(None), region)
            part = den(x[rows][crop].contiguous(), _of_rows(t, rows))
            for out, value in ((x0, part.x0), (eps, part.eps), (count, 1.0)):
                _add_to_crop(out, rows, crop, value)
        if bool(active.all()):
            return Prediction(x0 / count, eps / count)
        # The whole prompt for the others, on the whole batch: a sample without regions is
        # then drawn exactly as without them (a sub-batch can round differently).
        rest = self.whole(x, t)
        keep = active.view(-1, *[1] * (x.ndim - 1))
        count = count.clamp_min(1)
        return Prediction(torch.where(keep, x0 / count, rest.x0),
                          torch.where(keep, eps / count, rest.eps))


def _add_to_crop(out: Tensor, rows: Tensor, crop: tuple, value: Tensor | float) -> None:
    """out[rows][crop] += value, in `out`: indexing by a tensor of rows copies, so the rows
    are taken out, added to and written back."""
    block = out[rows]
    block[crop] += value
    out[rows] = block


def _of_rows(t: Tensor | float, rows: Tensor) -> Tensor | float:
    """The time of the listed samples: a single time is every sample's."""
    return t[rows] if torch.is_tensor(t) and t.numel() > 1 else t
