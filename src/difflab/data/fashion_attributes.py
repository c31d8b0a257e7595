"""What a Fashion-MNIST image shows beyond its class: its tone and pattern, measured from its
pixels, and captions that say them (issue 18).

Fashion-MNIST has labels, not captions, so a model trained on class captions draws "a plain
white tee" and "a black t-shirt" alike. Here two statistics of a garment's pixels give every
image a tone (light / mid / dark) and, where the garment has a broad surface and the answer is
clear, a pattern (plain / patterned / striped); captions are then written per (class, tone,
pattern) group ("a dark striped shirt", "a patterned dress in dark grey", "a blouse in a
dark shade, with stripes"), and the same functions judge a model's samples, so attribute
fidelity is measured by exactly the definition the captions were written with.

    tones, patterns = measure(images)          # uint8 (N, 28, 28) or (N, 1, 28, 28)
    TONES[tones[i]], PATTERNS[patterns[i]]     # pattern -1: none stated (ambiguous, or n/a)
    labels = group_labels(class_labels, images)  # index into GROUPS: the caption table's labels
    table = attribute_caption_table()          # CaptionTable, one caption list per group
    prompts = held_out_attribute_prompts()     # unseen wording, for bench/attribute_fidelity.py

The images show the garment as the dataset stores it, light on black: Fashion-MNIST negated the
intensities of the shop photos (Xiao et al. 2017), so "light" here is what a viewer sees, not
the colour of the product. docs/fashion_attributes.md has the figures: how each statistic
splits the training set, and per class.

Definitions (all on the 28x28 uint8 image; 4-neighbour morphology; constants below):

- foreground: pixels above FOREGROUND; the silhouette is the foreground closed by one pixel
  (a dark stripe one or two pixels wide inside a garment is part of it).
- tone: the mean brightness of the silhouette's core (the silhouette eroded by one pixel, which
  drops the anti-aliased rim), or, for straps and soles with almost no core (fewer than
  CORE_MIN pixels), the 75th percentile of the foreground. Cut at TONE_CUTS: the tertiles of
  that statistic over the 60,000 training images, so each tone holds a third of them.
- pattern, from the interior (the silhouette eroded by two pixels, away from the outline):
  edge density = the share of interior pixels whose step to the next pixel down or right
  exceeds EDGE_STEP grey levels. Plain below PLAIN_BELOW, patterned from PATTERNED_FROM; in
  between (small logos, knits, seams, plackets) no pattern is stated, so the words go only
  to garments a viewer would call so. Striped (horizontal stripes, the kind Fashion-MNIST's tops
  and dresses have; vertical lines are mostly zips, plackets and folds at this size): edge
  density from STRIPE_EDGES_FROM, and the interior's row means, less the mean of the two
  rows either side, carry at least STRIPE_RATIO times the pixels' variance within their row
  and change sign at least STRIPE_ALTERNATIONS times (three light-dark cycles, not a single
  colour block). An interior under MIN_INTERIOR pixels states no pattern.
- pattern words are only written for PATTERN_CLASSES, the six classes with a broad surface of
  cloth or leather. Trouser legs, sandal straps and the soles, laces and panels of sneakers
  and boots are all edges at 28x28: their edge density measures their construction, not a
  print (it puts 70 % of sneakers in the "patterned" band).

The pattern cut points were read off the training split by eye: 30 random images from each
band of edge density (0.04 wide) and of stripe ratio, and the cuts put where a viewer would
agree with the word (docs/fashion_attributes.md says what each band holds); the tone cuts are
tertiles, recomputed by the tests.

References: Xiao, Rasul & Vollgraf (2017), "Fashion-MNIST" (its conversion: grey, negated,
28x28); Gonzalez & Woods, "Digital Image Processing", ch. 9 (binary erosion, dilation, closing).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .caption_words import CAPTION_TEXT_DIR, load_words_file
from .captions import CaptionTable, class_captions, held_out_prompts, indefinite_article
from .catalog import dataset_spec

IMAGE_SIZE = 28
TONES = ("light", "mid", "dark")
PATTERNS = ("plain", "patterned", "striped")
NO_PATTERN = -1  # pattern_of's answer when no pattern is stated

FOREGROUND = 10  # grey levels; Fashion-MNIST's background is 0 with faint noise below this
CORE_MIN = 20  # core pixels below which tone falls back to the foreground's 75th percentile
# Tertiles of `brightness` over the 60,000 training images (fit_tone_cuts): below the first
# is dark, from the second on light. Recomputed by tests/test_fashion_attributes.py.
TONE_CUTS = (146.84, 193.15)
EDGE_STEP = 32  # grey levels: a step this large between neighbours is an edge, not shading
MIN_INTERIOR = 60  # interior pixels a garment needs for a pattern to be stated
PLAIN_BELOW = 0.16  # edge density: 27.9 % of PATTERN_CLASSES' training images are below
PATTERNED_FROM = 0.45  # 18.4 % of them are from here on (striped ones included)
STRIPE_EDGES_FROM = 0.30
STRIPE_RATIO = 5.0
STRIPE_ALTERNATIONS = 6
STRIPE_MIN_ROW = 4  # interior pixels a row needs to count in the row profile
STRIPE_MIN_STEP = 4.0  # grey levels a detrended row mean must reach to count as a sign
# T-shirt/top, Pullover, Dress, Coat, Shirt, Bag (module docstring).
PATTERN_CLASSES = (0, 2, 3, 4, 6, 8)

_CHUNK = 4096  # images per vectorised step: bounds the temporary arrays to ~50 MB

# ---------------------------------------------------------------------------------------------
# Pixel statistics


def _as_grey(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (N, 28, 28) from (N, 28, 28) or (N, 1, 28, 28) uint8; ValueError otherwise."""
    given = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = given[:, 0] if given.ndim == 4 and given.shape[1] == 1 else given
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"fashion attributes are measured on uint8 images (N, 28, 28) or (N, 1, 28, 28), "
            f"got {given.dtype} with shape {tuple(given.shape)} (resize others to 28x28 first)"
        )
    return x


def _neighbours(mask: np.ndarray, combine) -> np.ndarray:
    """Each pixel combined with its four neighbours (outside the image counts as False)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    out = p[:, 1:-1, 1:-1].copy()
    for part in (p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]):
        out = combine(out, part)
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return _neighbours(mask, np.logical_and)


def _dilate(mask: np.ndarray) -> np.ndarray:
    return _neighbours(mask, np.logical_or)


@dataclass(frozen=True)
class PixelStats:
    """The statistics tone and pattern are cut from, one entry per image (module docstring)."""

    brightness: np.ndarray  # float (N,): the tone statistic, grey levels
    interior: np.ndarray  # int (N,): interior pixels
    edge_density: np.ndarray  # float (N,): share of interior pixels on an edge
    stripe_ratio: np.ndarray  # float (N,): row-profile variance / within-row variance
    alternations: np.ndarray  # int (N,): sign changes of the detrended row profile


def _row_profile(x: np.ndarray, interior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stripe ratio, sign alternations) of each image's interior row profile."""
    count = interior.sum(2)  # (N, 28) interior pixels per row
    valid = count >= STRIPE_MIN_ROW
    safe = np.maximum(count, 1)
    mean = (x * interior).sum(2) / safe
    within = (((x - mean[:, :, None]) ** 2) * interior).sum(2) / safe
    # Detrend: each row less the mean of the valid rows one and two away, so shading that
    # changes slowly down the garment is not mistaken for stripes.
    total = np.zeros_like(mean)
    n = np.zeros_like(mean)
    for shift in (-2, -1, 1, 2):
        rolled_mean = np.zeros_like(mean)
        rolled_valid = np.zeros_like(valid)
        if shift > 0:
            rolled_mean[:, :-shift], rolled_valid[:, :-shift] = mean[:, shift:], valid[:, shift:]
        else:
            rolled_mean[:, -shift:], rolled_valid[:, -shift:] = mean[:, :shift], valid[:, :shift]
        total += rolled_mean * rolled_valid
        n += rolled_valid
    has = valid & (n > 0)
    detrended = np.where(has, mean - total / np.maximum(n, 1), 0.0)
    between = (detrended**2).sum(1) / np.maximum(has.sum(1), 1)
    within_mean = np.where(valid, within, 0.0).sum(1) / np.maximum(valid.sum(1), 1)
    ratio = between / np.maximum(within_mean, 1.0)
    # Sign changes between successive rows whose detrended mean is clearly non-zero.
    sign = np.where(has & (np.abs(detrended) > STRIPE_MIN_STEP), np.sign(detrended), 0.0)
    last = np.zeros(len(x))
    changes = np.zeros(len(x), dtype=np.int64)
    for r in range(x.shape[1]):
        s = sign[:, r]
        changes += (s != 0) & (last != 0) & (s != last)
        last = np.where(s != 0, s, last)
    return ratio, changes


def _stats_chunk(images: np.ndarray) -> PixelStats:
    x = images.astype(np.float32)
    foreground = images > FOREGROUND
    silhouette = _erode(_dilate(foreground)) | foreground
    core = _erode(silhouette)
    interior = _erode(core)
    n_core = core.sum((1, 2))
    brightness = (x * core).sum((1, 2)) / np.maximum(n_core, 1)
    for i in np.flatnonzero(n_core < CORE_MIN):  # straps and soles: few, so one by one
        pixels = x[i][foreground[i]]
        brightness[i] = np.percentile(pixels, 75) if len(pixels) else 0.0
    step = np.zeros_like(x)
    step[:, :-1] = np.abs(np.diff(x, axis=1))
    step[:, :, :-1] = np.maximum(step[:, :, :-1], np.abs(np.diff(x, axis=2)))
    n_interior = interior.sum((1, 2))
    edges = ((step > EDGE_STEP) & interior).sum((1, 2)) / np.maximum(n_interior, 1)
    ratio, changes = _row_profile(x, interior)
    return PixelStats(brightness.astype(np.float64), n_interior, edges.astype(np.float64),
                      ratio.astype(np.float64), changes)


def pixel_stats(images: np.ndarray | torch.Tensor) -> PixelStats:
    """The tone and pattern statistics of each image (uint8 (N, 28, 28) or (N, 1, 28, 28))."""
    x = _as_grey(images)
    parts = [_stats_chunk(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)] or [
        _stats_chunk(x)
    ]
    return PixelStats(*(np.concatenate([getattr(p, f) for p in parts]) for f in (
        "brightness", "interior", "edge_density", "stripe_ratio", "alternations")))


def tone_of(stats: PixelStats) -> np.ndarray:
    """Index into TONES of each image: light from TONE_CUTS[1], dark below TONE_CUTS[0]."""
    return np.where(stats.brightness >= TONE_CUTS[1], 0,
                    np.where(stats.brightness >= TONE_CUTS[0], 1, 2)).astype(np.int64)


def pattern_of(stats: PixelStats) -> np.ndarray:
    """Index into PATTERNS of each image, or NO_PATTERN where none is stated (between the
    plain and patterned cuts, or an interior too small to judge)."""
    e = stats.edge_density
    striped = (
        (e >= STRIPE_EDGES_FROM)
        & (stats.stripe_ratio >= STRIPE_RATIO)
        & (stats.alternations >= STRIPE_ALTERNATIONS)
    )
    out = np.full(len(e), NO_PATTERN, dtype=np.int64)
    out[e < PLAIN_BELOW] = 0
    out[e >= PATTERNED_FROM] = 1
    out[striped] = 2
    out[stats.interior < MIN_INTERIOR] = NO_PATTERN
    return out


def measure(images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(tone, pattern) indices of each image: into TONES, and into PATTERNS or NO_PATTERN."""
    stats = pixel_stats(images)
    return tone_of(stats), pattern_of(stats)


def pattern_satisfies(asked: str, measured: int) -> bool:
    """Whether a measured pattern (index or NO_PATTERN) is what a prompt naming ``asked``
    wants: stripes are a pattern, so a striped image satisfies "patterned"."""
    got = PATTERNS[measured] if measured != NO_PATTERN else None
    return got == asked or (asked == "patterned" and got == "striped")


def fit_tone_cuts(images: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """The tertiles of the tone statistic over ``images``: how TONE_CUTS was made, from the
    60,000 training images, rounded to two decimals."""
    b = pixel_stats(images).brightness
    low, high = np.percentile(b, [100 / 3, 200 / 3])
    return round(float(low), 2), round(float(high), 2)


# ---------------------------------------------------------------------------------------------
# Groups: the caption table's labels


@dataclass(frozen=True)
class Group:
    """Images of one class, tone and pattern (None: no pattern stated), which share captions."""

    label: int  # Fashion-MNIST's standard label
    tone: str
    pattern: str | None


def _groups() -> tuple[Group, ...]:
    out = []
    for label in range(len(dataset_spec("fashion_mnist").class_names or ())):
        patterns = (None, *PATTERNS) if label in PATTERN_CLASSES else (None,)
        out += [Group(label, t, p) for t in TONES for p in patterns]
    return tuple(out)


# 10 classes x 3 tones, and x 4 (none, plain, patterned, striped) for PATTERN_CLASSES: 84.
GROUPS: tuple[Group, ...] = _groups()
_GROUP_INDEX = {(g.label, g.tone, g.pattern): i for i, g in enumerate(GROUPS)}


def group_labels(class_labels: np.ndarray | torch.Tensor, images: np.ndarray | torch.Tensor
                 ) -> torch.Tensor:
    """The group (index into GROUPS) of each image, from its standard Fashion-MNIST class and
    its measured tone and pattern; int64 (N,). A pattern is kept only for PATTERN_CLASSES."""
    labels = np.asarray(class_labels.numpy() if isinstance(class_labels, torch.Tensor)
                        else class_labels, dtype=np.int64)
    tones, patterns = measure(images)
    if labels.shape != tones.shape:
        raise ValueError(f"{labels.size} class labels for {len(tones)} images")
    if labels.size and not 0 <= labels.min() <= labels.max() < 10:
        raise ValueError(f"class labels must be Fashion-MNIST's 0..9, got {labels.min()}.."
                         f"{labels.max()}")
    out = [
        _GROUP_INDEX[(c, TONES[t], PATTERNS[p] if p != NO_PATTERN and c in PATTERN_CLASSES
                      else None)]
        for c, t, p in zip(labels.tolist(), tones.tolist(), patterns.tolist(), strict=True)
    ]
    return torch.tensor(out, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Words (caption_text/attributes/fashion_mnist.toml)

WORDS_FILE = CAPTION_TEXT_DIR / "attributes" / "fashion_mnist.toml"
_SLOTS = ("both", "tone", "pattern")
_VALUE_KEYS = ("words", "phrases", "held_out_words", "held_out_phrases")
_TOP_KEYS = ("templates", "held_out_templates", "tones", "patterns", "class_only_exclude",
             "classes")


@dataclass(frozen=True)
class AttributeWords:
    """The attribute caption text: templates per kind (both attributes, tone only, pattern
    only), and per tone / pattern value its adjectives ("words") and phrases, training and
    held out; per class (label order) its nouns."""

    templates: dict[str, tuple[str, ...]]
    held_out_templates: dict[str, tuple[str, ...]]
    tones: dict[str, dict[str, tuple[str, ...]]]
    patterns: dict[str, dict[str, tuple[str, ...]]]
    class_only_exclude: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]

    def vocabulary(self, held_out: bool) -> set[str]:
        """Every attribute word and phrase, the training ones or the held-out ones."""
        keys = ("held_out_words", "held_out_phrases") if held_out else ("words", "phrases")
        return {w for table in (self.tones, self.patterns) for v in table.values()
                for k in keys for w in v[k]}


def _table(value: Any, keys: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table")
    missing = [k for k in keys if k not in value]
    unknown = sorted(set(value) - set(keys))
    if missing or unknown:
        raise ValueError(f"{where}: missing {', '.join(missing) or 'nothing'}, unknown "
                         f"{', '.join(unknown) or 'nothing'}; the keys are {', '.join(keys)}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v
                                                           for v in value):
        raise ValueError(f"{where} must be a non-empty list of non-empty strings")
    return tuple(value)


def read_attribute_words(path: str | Path) -> AttributeWords:
    """Parse and check an attribute words file: a missing or unknown key, or a non-string
    entry, is an error naming the file and the key (a dropped string would renumber every
    caption after it)."""
    path = Path(path)
    raw = load_words_file(path)
    _table(raw, _TOP_KEYS, str(path))
    templates = {
        key: {s: _strings(_table(raw[key], _SLOTS, f"{path}: {key}")[s], f"{path}: {key}.{s}")
              for s in _SLOTS}
        for key in ("templates", "held_out_templates")
    }
    values = {}
    for key, names in (("tones", TONES), ("patterns", PATTERNS)):
        table = _table(raw[key], names, f"{path}: {key}")
        values[key] = {
            v: {k: _strings(_table(table[v], _VALUE_KEYS, f"{path}: {key}.{v}")[k],
                            f"{path}: {key}.{v}.{k}") for k in _VALUE_KEYS}
            for v in names
        }
    classes = raw["classes"]
    expected = dataset_spec("fashion_mnist").class_names or ()
    if not isinstance(classes, list) or len(classes) != len(expected):
        raise ValueError(f"{path}: classes must be {len(expected)} [[classes]] tables, one per "
                         "Fashion-MNIST class in label order")
    names = []
    for i, t in enumerate(classes):
        _table(t, ("class", "names"), f"{path}: classes[{i}]")
        if t["class"] != expected[i]:
            raise ValueError(f"{path}: classes[{i}].class is {t['class']!r}; label {i} is "
                             f"{expected[i]!r}")
        names.append(_strings(t["names"], f"{path}: classes[{i}].names"))
    return AttributeWords(
        templates=templates["templates"],
        held_out_templates=templates["held_out_templates"],
        tones=values["tones"],
        patterns=values["patterns"],
        class_only_exclude=_strings(raw["class_only_exclude"], f"{path}: class_only_exclude"),
        names=tuple(names),
    )


@functools.cache
def attribute_words() -> AttributeWords:
    """The shipped attribute words (read once per process)."""
    if not WORDS_FILE.is_file():
        raise FileNotFoundError(f"no attribute words file {WORDS_FILE}; reinstall difflab")
    return read_attribute_words(WORDS_FILE)


# ---------------------------------------------------------------------------------------------
# Captions

# Class-only captions per class (from difflab.data.captions, spread over its list): prompts
# that name no attribute still land where training put them. About a sixth of a pattern
# group's captions, two fifths of a tone-only group's.
CLASS_ONLY_PER_CLASS = 24
_LEFT = re.compile(r"\{(?!a\})[^}]*\}")  # any slot but {a}


@functools.cache
def _terms() -> tuple[tuple[re.Pattern, str, str], ...]:
    """Every attribute term (training and held out) as (whole-word regex, attribute, value),
    longest first."""
    words = attribute_words()
    terms = {}
    for attr, table in (("tone", words.tones), ("pattern", words.patterns)):
        for value, forms in table.items():
            for group in forms.values():
                terms.update({t.lower(): (attr, value) for t in group})
    return tuple((re.compile(rf"(?<![\w-]){re.escape(t)}(?![\w-])"), attr, value)
                 for t, (attr, value) in sorted(terms.items(), key=lambda kv: -len(kv[0])))


@functools.cache
def stated_attributes(text: str) -> dict[str, frozenset[str]]:
    """The tones and patterns a caption or prompt states in this file's words (training and
    held out), ``{"tone": ..., "pattern": ...}``: its attribute terms, longest first, so that
    "light grey" is light, not mid ("grey"). Words outside the file are not read."""
    low, found = text.lower(), {"tone": set(), "pattern": set()}
    for regex, attr, value in _terms():
        if regex.search(low):
            found[attr].add(value)
            low = regex.sub(" ", low)
    return {k: frozenset(v) for k, v in found.items()}


def fill(template: str, name: str, tone: tuple[str, str] | None = None,
         pattern: tuple[str, str] | None = None) -> str:
    """A template with a class noun, and a tone and a pattern as (adjective, phrase).

    Adjectives right before ``{name}`` qualify it, and for a "pair of ..." noun move after
    "pair of" ("a pair of dark trousers"); elsewhere ("a shirt that is {tone}") they stand as
    written. ``{a}`` becomes the article of the next word. ValueError when a slot is left
    unfilled."""
    given = {"{tone}": tone, "{pattern}": pattern}
    text = template
    for item in ("{tone} {pattern} {name}", "{tone} {name}", "{pattern} {name}", "{name}"):
        if item in text:
            slots = item.split()[:-1]
            if any(given[s] is None for s in slots):
                raise ValueError(f"template {template!r} needs {' and '.join(slots)}")
            adjectives = [given[s][0] for s in slots]  # type: ignore[index]
            head = "pair of " if name.startswith("pair of ") else ""
            text = text.replace(item, head + " ".join([*adjectives, name.removeprefix(head)]))
            break
    for slot, value in given.items():
        if value is not None:
            text = text.replace(slot, value[0])
            text = text.replace(slot[:-1] + "_phrase}", value[1])
    if _LEFT.search(text):
        raise ValueError(f"template {template!r} has a slot left unfilled: {text!r}")
    return re.sub(r"\{a\} (\S+)", lambda m: f"{indefinite_article(m[1])} {m[1]}", text)


def _cycle(options: Sequence[str], i: int) -> str:
    return options[i % len(options)]


def _written(templates: Sequence[str], names: Sequence[str], tone: dict | None,
             pattern: dict | None, held_out: bool) -> list[str]:
    """Captions of every template and noun, the attribute words taken in turn: every word
    appears with every template, without writing out every combination."""
    wkey, pkey = ("held_out_words", "held_out_phrases") if held_out else ("words", "phrases")
    width = max([len(v[wkey]) for v in (tone, pattern) if v is not None] or [1])
    out = []
    for t, template in enumerate(templates):
        for n, name in enumerate(names):
            for k in range(width):
                tw = None if tone is None else (_cycle(tone[wkey], k),
                                                _cycle(tone[pkey], k + n))
                pw = None if pattern is None else (_cycle(pattern[wkey], k + t + n),
                                                   _cycle(pattern[pkey], k + t))
                out.append(fill(template, name, tw, pw))
    return out


def _mentions(text: str, terms: set[str]) -> bool:
    low = text.lower()
    return any(re.search(rf"(?<![\w-]){re.escape(w.lower())}(?![\w-])", low) for w in terms)


@functools.cache
def _class_only() -> tuple[tuple[str, ...], ...]:
    """Per class, CLASS_ONLY_PER_CLASS class captions that state no tone or pattern."""
    words = attribute_words()
    avoid = (words.vocabulary(False) | words.vocabulary(True)
             | set(words.class_only_exclude))
    out = []
    for caps in class_captions("fashion_mnist"):
        clean = [c for c in caps if not _mentions(c, avoid)]
        step = max(1, len(clean) // CLASS_ONLY_PER_CLASS)
        out.append(tuple(clean[::step][:CLASS_ONLY_PER_CLASS]))
    return tuple(out)


@functools.cache
def group_captions() -> tuple[tuple[str, ...], ...]:
    """The training captions of each group in GROUPS: both attributes (when a pattern is
    stated), tone only, pattern only, and CLASS_ONLY_PER_CLASS class captions. Captions that
    are held-out prompts (these, or the class paraphrases of difflab.data.captions) are left
    out, so that held-out scores measure unseen wording."""
    words = attribute_words()
    held = {p.text.lower() for p in held_out_attribute_prompts()}
    held |= {p.lower() for ps in held_out_prompts("fashion_mnist").values() for p in ps}
    out = []
    for g in GROUPS:
        names, tone = words.names[g.label], words.tones[g.tone]
        pattern = words.patterns[g.pattern] if g.pattern else None
        caps = _written(words.templates["tone"], names, tone, None, False)
        if pattern is not None:
            caps = (_written(words.templates["both"], names, tone, pattern, False) + caps
                    + _written(words.templates["pattern"], names, None, pattern, False))
        caps += _class_only()[g.label]
        out.append(tuple(c for c in dict.fromkeys(caps) if c.lower() not in held))
    return tuple(out)


@functools.cache
def attribute_caption_table() -> CaptionTable:
    """:class:`CaptionTable` of :func:`group_captions`: label i is GROUPS[i]."""
    return CaptionTable.from_captions(group_captions())


@dataclass(frozen=True)
class AttributePrompt:
    """A held-out prompt and what it asks for (tone or pattern None: not named)."""

    label: int  # Fashion-MNIST's standard label
    tone: str | None
    pattern: str | None
    text: str


@functools.cache
def held_out_attribute_prompts() -> tuple[AttributePrompt, ...]:
    """Prompts in wording no training caption uses, two per (class, tone, pattern) asked:
    held-out synonyms ("charcoal", "hooped", "unadorned") in a training sentence shape, and
    held-out synonyms in a held-out sentence shape. Asked: class + tone (every class), and
    class + tone + pattern and class + pattern (PATTERN_CLASSES)."""
    words = attribute_words()
    asks: list[tuple[int, str | None, str | None]] = []
    for label in range(len(words.names)):
        asks += [(label, t, None) for t in TONES]
        if label in PATTERN_CLASSES:
            asks += [(label, t, p) for t in TONES for p in PATTERNS]
            asks += [(label, None, p) for p in PATTERNS]
    out = []
    for i, (label, tone, pattern) in enumerate(asks):
        kind = "both" if tone and pattern else ("tone" if tone else "pattern")
        tw = words.tones[tone] if tone else None
        pw = words.patterns[pattern] if pattern else None
        name = _cycle(words.names[label], i)
        for j, templates in enumerate((words.templates[kind], words.held_out_templates[kind])):
            template = _cycle(templates, i + j)
            tone_words = None if tw is None else (_cycle(tw["held_out_words"], i + j),
                                                   _cycle(tw["held_out_phrases"], i))
            pattern_words = None if pw is None else (_cycle(pw["held_out_words"], i),
                                                      _cycle(pw["held_out_phrases"], i + j))
            out.append(AttributePrompt(label, tone, pattern,
                                       fill(template, name, tone_words, pattern_words)))
    return tuple(dict.fromkeys(out))


def read_attribute_prompts(path: str | Path) -> tuple[AttributePrompt, ...]:
    """Prompts from a tab-separated file, one per line: class name (as the dataset spells it),
    tone, pattern ("-": not asked) and the prompt; blank lines and "# " comments are skipped.
    A pattern may only be asked of PATTERN_CLASSES. ValueError naming the line otherwise.
    For prompt sets written apart from the captions (bench/prompts/attribute_check.txt)."""
    classes = list(dataset_spec("fashion_mnist").class_names or ())
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        where = f"{path}, line {n}"
        if len(fields) != 4:
            raise ValueError(f"{where}: {len(fields)} tab-separated fields; want class, tone, "
                             "pattern, prompt")
        name, tone, pattern, text = (f.strip() for f in fields)
        if name not in classes:
            raise ValueError(f"{where}: class {name!r} is not one of {classes}")
        if tone not in (*TONES, "-") or pattern not in (*PATTERNS, "-"):
            raise ValueError(f"{where}: tone must be one of {TONES} or '-', pattern one of "
                             f"{PATTERNS} or '-'; got {tone!r}, {pattern!r}")
        label = classes.index(name)
        if pattern != "-" and label not in PATTERN_CLASSES:
            raise ValueError(f"{where}: a pattern is only asked of "
                             f"{[classes[c] for c in PATTERN_CLASSES]}, not {name!r}")
        if tone == pattern == "-" or not text:
            raise ValueError(f"{where}: a prompt must ask for a tone or a pattern")
        out.append(AttributePrompt(label, None if tone == "-" else tone,
                                   None if pattern == "-" else pattern, text))
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return tuple(out)
