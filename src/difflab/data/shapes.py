"""``shapes``: a synthetic world where following a prompt can be checked exactly (issue 18).

32x32 RGB images of 1-4 objects (circle, square, triangle; six colours; two sizes) at
non-overlapping positions, each with captions from a grammar with varied wording ("a red
circle", "one small blue square and two yellow triangles", "a purple square above three
orange circles"), generated on the fly and the same for the same seed. Scenes are the single
source of truth (:mod:`.shapes_scene`); captions and prompts are written from them
(:mod:`.shapes_grammar`); ``difflab.metrics.geneval`` scores images against prompts.

    train = make_training_set(20_000, seed=0)      # images, scenes, captions of each image
    data = train.image_data()                      # ImageData; labels[i] = i, the image index
    table = train.caption_table()                  # texts + caption ids per image
    prompts = geneval_prompts()                    # {category: [PromptSpec]}, the test prompts

Held out (shapes_scene.HELD_OUT_*): three colour-shape pairs, three (shape, count) pairs and
two (shape pair, axis) relations occur in no training scene, only in test prompts, and no
training caption is a test prompt. Test prompts come in GenEval's six categories (Ghosh et
al. 2023), written in the grammar's canonical wording.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .base import ImageData
from .captions import CaptionTable
from .shapes_grammar import (
    CATEGORIES,
    ObjectSpec,
    PromptSpec,
    held_out_in_spec,
    parse_prompt,
    scene_captions,
)
from .shapes_scene import (
    AXIS,
    COLOUR_NAMES,
    GAP_PX,
    HELD_OUT_COLOUR_SHAPES,
    HELD_OUT_COUNTS,
    HELD_OUT_RELATIONS,
    IMAGE_SIZE,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    SIZES,
    PairCheck,
    SceneBatch,
    avoid_held_out_relations,
    place_objects,
    render,
)

SPLITS = ("train", "test")
# Ways to split n objects into phrases of identical objects ("two red circles and a blue
# square" is (2, 1)); a scene draws n uniformly, then one of these uniformly.
PARTITIONS = {
    1: ((1,),),
    2: ((2,), (1, 1)),
    3: ((3,), (2, 1), (1, 1, 1)),
    4: ((4,), (3, 1), (2, 2), (2, 1, 1), (1, 1, 1, 1)),
}
SAME_SIZE_PROB = 0.7  # a phrase's objects share one size this often ("two small circles")
LAYOUT_TRIES = 8  # layout rounds before a scene that found no layout is recomposed
# Most objects in a scene laid out to show a relation: two or three ("two red circles above a
# blue square"). With four, every object of one phrase clearly beside every one of the other
# rarely fits in 32x32, and the placement would spend most of its rounds on those.
RELATION_OBJECTS = 3

# (shape, colour) index pairs a training scene may use.
_TRAIN_PAIRS = np.array(
    [
        (s, c)
        for s in range(len(SHAPES))
        for c in range(len(COLOUR_NAMES))
        if (COLOUR_NAMES[c], SHAPES[s]) not in HELD_OUT_COLOUR_SHAPES
    ]
)
_PATTERNS = [p for n in sorted(PARTITIONS) for p in PARTITIONS[n]]
# Per pattern: objects per phrase, padded; the phrase of each object slot, -1 for none.
_PATTERN_COUNTS = np.array([[*p] + [0] * (MAX_OBJECTS - len(p)) for p in _PATTERNS])
_PATTERN_SLOTS = np.array(
    [
        [g for g, k in enumerate(p) for _ in range(k)] + [-1] * (MAX_OBJECTS - sum(p))
        for p in _PATTERNS
    ]
)
_PATTERNS_OF = [np.array([i for i, p in enumerate(_PATTERNS) if sum(p) == n]) for n in PARTITIONS]
# The same, two phrases only ("two red circles and a blue square"): the scenes a relation
# can be stated of; none for one object.
_PAIR_PATTERNS_OF = [
    np.array([i for i, p in enumerate(_PATTERNS) if sum(p) == n and len(p) == 2])
    for n in PARTITIONS
]


def _draw_compositions(
    objects: np.ndarray, rng: np.random.Generator, two_phrases: np.ndarray | None = None
) -> SceneBatch:
    """Training compositions of ``objects[i]`` objects each, positions not yet drawn: one
    of their PARTITIONS uniformly (of two phrases only where ``two_phrases[i]``), a distinct
    allowed colour-shape pair per phrase, sizes shared within a phrase with SAME_SIZE_PROB.
    Compositions with a held-out count (in a phrase or in a shape's total) are drawn again.
    Vectorised over scenes."""
    batch = SceneBatch.empty(len(objects))
    todo = np.arange(len(objects))
    while len(todo):
        m = len(todo)
        pick = rng.random(m)
        pairs_only = np.zeros(m, bool) if two_phrases is None else two_phrases[todo]
        options = [
            (_PAIR_PATTERNS_OF if two else _PATTERNS_OF)[k - 1]
            for k, two in zip(objects[todo], pairs_only, strict=True)
        ]
        pattern = np.array([o[int(u * len(o))] for o, u in zip(options, pick, strict=True)])
        counts = _PATTERN_COUNTS[pattern]  # (m, 4) objects per phrase
        order = np.argsort(rng.random((m, len(_TRAIN_PAIRS))), axis=1)[:, :MAX_OBJECTS]
        pairs = _TRAIN_PAIRS[order]  # (m, 4, 2) distinct (shape, colour) per phrase
        held = np.zeros(m, dtype=bool)
        for shape, k in HELD_OUT_COUNTS:
            mine = (pairs[..., 0] == SHAPES.index(shape)) & (counts > 0)
            total = np.where(mine, counts, 0).sum(axis=1)
            held |= (total == k) | np.any(mine & (counts == k), axis=1)
        phrase_size = rng.integers(len(SIZES), size=(m, MAX_OBJECTS))
        shared = rng.random((m, MAX_OBJECTS)) < SAME_SIZE_PROB
        own_size = rng.integers(len(SIZES), size=(m, MAX_OBJECTS))
        slot = _PATTERN_SLOTS[pattern]  # (m, 4) phrase of each object slot
        has, phrase, r = slot >= 0, np.maximum(slot, 0), np.arange(m)[:, None]
        size = np.where(shared[r, phrase], phrase_size[r, phrase], own_size)
        keep = ~held
        rows = todo[keep]
        batch.shape[rows] = np.where(has, pairs[r, phrase, 0], -1)[keep]
        batch.colour[rows] = np.where(has, pairs[r, phrase, 1], -1)[keep]
        batch.size[rows] = np.where(has, size, -1)[keep]
        todo = todo[held]
    return batch


def draw_training_scenes(n: int, seed: int = 0, relations: float = 0.0) -> SceneBatch:
    """``n`` training scenes, the same for the same seed: compositions drawn for all scenes
    at once (:func:`_draw_compositions`), then positions placed object by object
    (shapes_scene.place_objects) so that no held-out relation appears; a scene that finds
    no layout in LAYOUT_TRIES rounds is recomposed.

    ``relations`` (0 to 1) is the share of scenes composed as two phrases of 2 to
    RELATION_OBJECTS objects in all, laid out to show a relation between the phrases clearly
    (:func:`_relations_to_show`), so that about half their captions state it. At 0 (the
    default) 1-4 objects are uniform and a scene states a relation only when its draw happens
    to be two phrases apart: about one caption in twelve. Its draws come from their own
    stream, so at 0 the scenes are exactly those of earlier versions."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of scenes must be a positive integer, got {n!r}")
    if isinstance(relations, bool) or not 0.0 <= relations <= 1.0:
        raise ValueError(f"relations must be a share between 0 and 1, got {relations!r}")
    rng = np.random.default_rng([seed, 18])
    own = np.random.default_rng([seed, 18, 1])
    wants, picks = own.random(n) < relations, own.integers(len(RELATIONS), size=n)
    objects = np.where(
        wants, own.integers(2, RELATION_OBJECTS + 1, n), rng.integers(1, MAX_OBJECTS + 1, n)
    )
    batch = _draw_compositions(objects, rng, wants)
    pending = np.arange(n)
    rounds = 0
    while len(pending):
        part = batch.take(pending)
        check = avoid_held_out_relations(part)
        if wants[pending].any():
            first, relation = _relations_to_show(part, wants[pending], picks[pending])
            check = _both(check, _relation_check(part, first, relation))
        ok = place_objects(part, rng, check)
        batch.xy[pending[ok]] = part.xy[ok]
        pending = pending[~ok]
        rounds += 1
        if rounds % LAYOUT_TRIES == 0 and len(pending):
            # Same number of objects: hard layouts must not shift the mix to fewer.
            objects = batch.present[pending].sum(axis=1)
            batch.put(pending, _draw_compositions(objects, rng, wants[pending]))
    batch.xy[~batch.present] = 0.0
    return batch


def _relations_to_show(
    batch: SceneBatch, wants: np.ndarray, picks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For scenes of exactly two phrases (slots come phrase by phrase) where ``wants``: the
    objects in the first phrase, and the relation (index into RELATIONS, ``picks``) that
    the first phrase is to stand in to the second; -1 for scenes that show none. A relation
    whose (shape pair, axis) is held out turns to the other axis ("left of" to "above")."""
    same = (batch.shape == batch.shape[:, :1]) & (batch.colour == batch.colour[:, :1])
    first = (same & batch.present).sum(axis=1)
    rows = np.arange(len(batch))
    second = np.minimum(first, MAX_OBJECTS - 1)
    rest = batch.present & ~same
    one_more = (batch.shape == batch.shape[rows, second][:, None]) & (
        batch.colour == batch.colour[rows, second][:, None]
    )
    two = rest.any(axis=1) & np.all(one_more | ~rest, axis=1)
    relation = np.where(wants & two, picks, -1)
    for i in np.nonzero(relation >= 0)[0]:
        pair = frozenset({SHAPES[batch.shape[i, 0]], SHAPES[batch.shape[i, second[i]]]})
        if (pair, AXIS[RELATIONS[relation[i]]]) in HELD_OUT_RELATIONS:
            relation[i] = (relation[i] + 2) % len(RELATIONS)  # left of <-> above, right <-> below
    return first, relation


def _both(a: PairCheck, b: PairCheck) -> PairCheck:
    return lambda rows, j, k, xy_j, cand: a(rows, j, k, xy_j, cand) & b(rows, j, k, xy_j, cand)


def _show_relations(batch: SceneBatch, specs: list[PromptSpec]) -> PairCheck:
    """:func:`_relation_check` for the relation of each row's spec (none: no constraint)."""
    first = np.array([s.groups[0].count if s.relation else 0 for s in specs])
    relation = np.array([RELATIONS.index(s.relation) if s.relation else -1 for s in specs])
    return _relation_check(batch, first, relation)


def _relation_check(batch: SceneBatch, first: np.ndarray, relation: np.ndarray) -> PairCheck:
    """A ``pair_ok`` for place_objects: in row i, each of the first ``first[i]`` objects
    (the first phrase) and each later one (the second) stand clearly (shapes_scene.
    clear_relation) in RELATIONS[relation[i]]; rows with relation -1 are free."""
    axis = np.array([r >= 0 and AXIS[RELATIONS[r]] == "vertical" for r in relation], np.int64)
    sign = np.where(
        np.isin(relation, [RELATIONS.index("left of"), RELATIONS.index("above")]), 1.0, -1.0
    )
    shown = relation >= 0
    ext = batch.extent

    def pair_ok(rows, j, k, xy_j, cand):
        applies = shown[rows] & (j < first[rows]) & (first[rows] <= k)
        d = cand - xy_j[:, None, :]  # (m, C, 2): second phrase's object minus the first's
        ax = axis[rows, None, None]
        along = sign[rows, None] * np.take_along_axis(d, ax, axis=2)[..., 0]
        across = np.abs(np.take_along_axis(d, 1 - ax, axis=2)[..., 0])
        reach = (ext[rows, j] + ext[rows, k]) / 2 + GAP_PX
        return ~applies[:, None] | ((along >= reach[:, None]) & (along > across))

    return pair_ok


def scenes_for_specs(specs: list[PromptSpec], seed: int = 0) -> SceneBatch:
    """One scene per spec that the spec describes exactly: unnamed colours and sizes drawn
    at random (held-out pairs included: these are test scenes), a relation shown clearly.
    The reference images of the test prompts, and the scorer's ground truth."""
    for spec in specs:
        if spec.num_objects > MAX_OBJECTS:
            raise ValueError(
                f"{spec.text()!r} asks for {spec.num_objects} objects; scenes hold 1..{MAX_OBJECTS}"
            )
    rng = np.random.default_rng([seed, 1802])
    batch = SceneBatch.empty(len(specs))
    for row, spec in enumerate(specs):
        k = 0
        for g in spec.groups:
            colour = g.colour or COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
            for _ in range(g.count):
                size = g.size or SIZES[rng.integers(len(SIZES))]
                batch.shape[row, k] = SHAPES.index(g.shape)
                batch.colour[row, k] = COLOUR_NAMES.index(colour)
                batch.size[row, k] = SIZES.index(size)
                k += 1
    pending = np.arange(len(specs))
    for _ in range(1000):
        if not len(pending):
            return batch
        part = batch.take(pending)
        ok = place_objects(part, rng, _show_relations(part, [specs[p] for p in pending]))
        batch.xy[pending[ok]] = part.xy[ok]
        pending = pending[~ok]
    raise ValueError(f"no layout found for {specs[pending[0]].text()!r}")


# ---------------------------------------------------------------------------------------------
# The test prompts


def geneval_prompts() -> dict[str, list[PromptSpec]]:
    """The held-out evaluation prompts, per GenEval category, in canonical wording (fixed:
    the same in every run and every checkout).

    single_object: each shape, bare and with each size ("a circle", "a small circle").
    two_object: each ordered pair of shapes ("a circle and a square").
    counting: each shape in 2-4, bare and in one colour ("three triangles", "three red
    triangles"). colours: all 18 colour-shape pairs. position: each ordered pair of shapes
    in each relation, in two colours. attribute_binding: each ordered pair of shapes in four
    pairs of colours. Held-out compositions (:func:`held_out_prompts`) sit in all but the
    first two, which test wording and objects, not composition.
    """
    rng = np.random.default_rng(1802)
    pairs = list(itertools.permutations(SHAPES, 2))
    out: dict[str, list[PromptSpec]] = {
        "single_object": [
            PromptSpec((ObjectSpec(s, size=z),)) for s in SHAPES for z in (None, *SIZES)
        ],
        "two_object": [PromptSpec((ObjectSpec(a), ObjectSpec(b))) for a, b in pairs],
        "counting": [
            PromptSpec((ObjectSpec(s, n, colour),))
            for s in SHAPES
            for n in (2, 3, 4)
            for colour in (None, COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))])
        ],
        "colours": [PromptSpec((ObjectSpec(s, colour=c),)) for s in SHAPES for c in COLOUR_NAMES],
        "position": [],
        "attribute_binding": [],
    }
    colour_pairs = list(itertools.permutations(COLOUR_NAMES, 2))
    for a, b in pairs:
        for relation in RELATIONS:
            ca, cb = colour_pairs[rng.integers(len(colour_pairs))]
            out["position"].append(
                PromptSpec((ObjectSpec(a, colour=ca), ObjectSpec(b, colour=cb)), relation)
            )
        for i in rng.choice(len(colour_pairs), 4, replace=False):
            ca, cb = colour_pairs[i]
            out["attribute_binding"].append(
                PromptSpec((ObjectSpec(a, colour=ca), ObjectSpec(b, colour=cb)))
            )
    assert tuple(out) == CATEGORIES
    return out


def held_out_prompts() -> dict[str, list[PromptSpec]]:
    """The test prompts that ask for a held-out composition, per category."""
    return {c: [p for p in specs if held_out_in_spec(p)] for c, specs in geneval_prompts().items()}


def training_prompts(per_category: int = 16, seed: int = 1) -> dict[str, list[str]]:
    """Prompts from the TRAINING distribution, ``per_category`` per GenEval category: captions
    of fresh training scenes (drawn with ``seed``; 0 is the default training set's), in
    their varied wording, so no held-out composition and no test prompt. What to tune a
    model's size, rate or guidance on; the test prompts (:func:`geneval_prompts`) stay for
    the score reported. Deterministic for a seed."""
    _check("per_category", per_category, 1)
    out: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    words = random.Random(f"shapes-prompts-{seed}")
    exclude = evaluation_prompt_texts()
    chunk = 0
    while any(len(v) < per_category for v in out.values()):
        chunk += 1
        if chunk > 50:
            short = [c for c, v in out.items() if len(v) < per_category]
            raise ValueError(f"too few training captions in categories {short}")
        scenes = draw_training_scenes(2_000, seed * 1_000 + chunk)
        for scene in scenes.scenes():
            for text in scene_captions(scene, words, 8, exclude):
                kind = parse_prompt(text).category
                if kind in out and len(out[kind]) < per_category and text not in out[kind]:
                    out[kind].append(text)
                    break  # one caption per scene: prompts of many different scenes
    return out


def evaluation_prompt_texts() -> frozenset[str]:
    """Every test prompt's text: what no training caption may be."""
    return frozenset(p.text() for specs in geneval_prompts().values() for p in specs)


# ---------------------------------------------------------------------------------------------
# Data sets


@dataclass
class ShapesSet:
    """Scenes, the captions of each, and their images (rendered on first use)."""

    scenes: SceneBatch
    captions: list[list[str]]  # captions[i]: every caption of image i
    name: str
    image_size: int = IMAGE_SIZE

    def __len__(self) -> int:
        return len(self.scenes)

    @cached_property
    def images(self) -> np.ndarray:
        """uint8 (N, 3, S, S)."""
        return render(self.scenes, self.image_size)

    def image_data(self) -> ImageData:
        """The images as ImageData, labelled by their own index: labels[i] = i, so that
        captions follow an image through subsetting and shuffling (caption_table picks a
        caption of image i by label i). No class names: the images are not classes."""
        labels = torch.arange(len(self), dtype=torch.int64)
        return ImageData(torch.from_numpy(self.images), labels, None, self.name)

    def caption_table(self) -> CaptionTable:
        """Every distinct caption once and, per image (by label), the ids of its captions."""
        return CaptionTable.from_captions(self.captions)


def _check(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def make_training_set(
    n: int = 20_000,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    captions_per_image: int = 8,
    relations: float = 0.0,
    places: float = 0.0,
) -> ShapesSet:
    """``n`` training scenes with up to ``captions_per_image`` captions each (never a test
    prompt) and their images, the same for the same arguments; ``relations`` as in
    :func:`draw_training_scenes`; ``places`` the share of captions that say where in the
    picture a phrase stands, when its scene allows (shapes_grammar.scene_captions)."""
    _check("n", n, 1)
    _check("captions_per_image", captions_per_image, 1)
    _check("image_size", image_size, 16)
    scenes = draw_training_scenes(n, seed, relations)
    exclude = evaluation_prompt_texts()
    words = random.Random(f"shapes-captions-{seed}")  # Python's: ~10x cheaper per draw
    captions = [
        scene_captions(s, words, captions_per_image, exclude, places) for s in scenes.scenes()
    ]
    name = f"shapes/train/seed{seed}" + (f"/relations{relations:g}" if relations else "")
    name += f"/places{places:g}" if places else ""
    return ShapesSet(scenes, captions, name, image_size)


def make_test_set(n: int | None = None, seed: int = 0, image_size: int = IMAGE_SIZE) -> ShapesSet:
    """Reference images of the test prompts, each captioned by its prompt alone: round
    after round of every prompt of :func:`geneval_prompts` (so any first ``n`` images cover
    the prompts evenly), ``n`` images in all (default: one round)."""
    prompts = [p for ps in geneval_prompts().values() for p in ps]
    n = len(prompts) if n is None else n
    _check("n", n, 1)
    _check("image_size", image_size, 16)
    specs = [prompts[i % len(prompts)] for i in range(n)]
    captions = [[p.text()] for p in specs]
    return ShapesSet(scenes_for_specs(specs, seed), captions, f"shapes/test/seed{seed}", image_size)


def make_shapes(
    split: str = "train",
    n: int = 20_000,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    relations: float = 0.0,
    places: float = 0.0,
) -> ShapesSet:
    """``n`` images of the ``train`` split (:func:`make_training_set`, with ``relations`` and
    ``places``)
    or of the ``test`` references (:func:`make_test_set`, which show every relation their
    prompt states)."""
    if split not in SPLITS:
        raise ValueError(f"shapes split {split!r}: allowed {', '.join(SPLITS)}")
    if split == "train":
        return make_training_set(n, seed, image_size, relations=relations, places=places)
    return make_test_set(n, seed, image_size)


def load_shapes(
    split: str = "train",
    n: int = 20_000,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    relations: float = 0.0,
    places: float = 0.0,
) -> ImageData:
    """:func:`make_shapes` as the project's ImageData; labels index the captions of
    :func:`shapes_caption_table` with the same split, n, seed, relations and places."""
    return make_shapes(split, n, seed, image_size, relations, places).image_data()


def shapes_caption_table(
    split: str = "train",
    n: int = 20_000,
    seed: int = 0,
    relations: float = 0.0,
    places: float = 0.0,
) -> CaptionTable:
    """The caption table of :func:`load_shapes` with the same split, n, seed, relations and
    places (no images are rendered)."""
    return make_shapes(split, n, seed, relations=relations, places=places).caption_table()
