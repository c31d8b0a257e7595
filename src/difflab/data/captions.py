"""Captions made from class names, for training text-to-image models on labelled datasets.

Fashion-MNIST and MNIST have labels, not captions. Each class gets a handful of names
(synonyms and short descriptions: "sneaker", "trainer", "athletic shoe", ...) that are
put into sentence templates ("a photo of {a} {}", "{a} {} on a black background", ...),
which gives a couple of hundred distinct captions per class. Training on varied wording,
with a pretrained sentence encoder, is what lets the model follow prompts it never saw;
:func:`held_out_prompts` holds paraphrases kept out of the training captions to measure
exactly that.

    table = caption_table("fashion_mnist")        # every distinct caption, once
    embeddings = encoder.encode(table.texts)       # encode each caption once, then cache
    text_ids = table.pick(labels, generator)       # (B,) a random caption of each label

References:
- Radford et al. (2021), CLIP, section 3.1.4 and its prompt-engineering notebook: class
  names put into templates ("a photo of a {}.", "a low resolution photo of a {}.").
- Xiao et al. (2017), "Fashion-MNIST": the ten classes and what the images show (single
  Zalando product photos, grey on black, 28x28).
- LeCun et al. (1998): MNIST, handwritten digits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import fashion_mnist, mnist
from .base import resolve_class

CAPTIONED_DATASETS = ("fashion_mnist", "mnist", "digits")

# ---------------------------------------------------------------------------------------------
# Names of each class, in the dataset's label order. Each name is written as it reads after
# "a"/"an": a noun nobody says in the singular is a "pair of ..." (its bare form, in the
# "{}" template, drops the "pair of "). Two classes never share a name, so a caption
# always says which class it is.

_FASHION_NAMES: tuple[tuple[str, ...], ...] = (
    (  # 0 T-shirt/top
        "T-shirt",
        "tee",
        "tee shirt",
        "top",
        "tank top",
        "crew-neck T-shirt",
        "short-sleeved tee",
        "sleeveless top",
        "casual top",
        "cotton T-shirt",
    ),
    (  # 1 Trouser
        "pair of trousers",
        "pair of pants",
        "pair of jeans",
        "pair of slacks",
        "pair of chinos",
        "pair of leggings",
        "pair of sweatpants",
        "pair of long trousers",
    ),
    (  # 2 Pullover
        "pullover",
        "sweater",
        "jumper",
        "knit sweater",
        "wool jumper",
        "long-sleeved pullover",
        "sweatshirt",
        "crew-neck sweater",
        "turtleneck sweater",
    ),
    (  # 3 Dress
        "dress",
        "gown",
        "sundress",
        "summer dress",
        "evening dress",
        "sleeveless dress",
        "shift dress",
        "frock",
        "maxi dress",
        "cocktail dress",
    ),
    (  # 4 Coat
        "coat",
        "jacket",
        "overcoat",
        "winter coat",
        "parka",
        "raincoat",
        "trench coat",
        "anorak",
        "zip-up jacket",
        "blazer",
    ),
    (  # 5 Sandal
        "sandal",
        "flip-flop",
        "open-toe sandal",
        "strappy sandal",
        "summer sandal",
        "slide sandal",
        "high-heeled sandal",
        "gladiator sandal",
    ),
    (  # 6 Shirt
        "shirt",
        "button-up shirt",
        "button-down shirt",
        "dress shirt",
        "collared shirt",
        "blouse",
        "flannel shirt",
        "long-sleeved shirt",
        "plaid shirt",
        "work shirt",
    ),
    (  # 7 Sneaker
        "sneaker",
        "trainer",
        "athletic shoe",
        "tennis shoe",
        "low-top shoe",
        "running shoe",
        "canvas shoe",
        "sports shoe",
        "gym shoe",
        "training shoe",
    ),
    (  # 8 Bag
        "bag",
        "handbag",
        "purse",
        "tote bag",
        "shoulder bag",
        "backpack",
        "satchel",
        "clutch",
        "shopping bag",
        "leather bag",
    ),
    (  # 9 Ankle boot
        "ankle boot",
        "boot",
        "short boot",
        "Chelsea boot",
        "bootie",
        "heeled boot",
        "leather boot",
        "winter boot",
        "combat boot",
        "hiking boot",
    ),
)

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# "handwritten" is left to the templates ("a handwritten {}"), so it is never said twice.
_DIGIT_NAMES: tuple[tuple[str, ...], ...] = tuple(
    (
        str(d),
        word,
        f"digit {d}",
        f"digit {word}",
        f"number {d}",
        f"number {word}",
        f"numeral {d}",
        f"numeral {word}",
    )
    for d, word in enumerate(_DIGIT_WORDS)
)

# ---------------------------------------------------------------------------------------------
# Templates: "{}" is the name, "{a}" the article that fits the word after it ("an ankle
# boot", "a small ankle boot"). Fashion-MNIST images are product photos, grey on black.

_FASHION_TEMPLATES = (
    "{}",
    "{a} {}",
    "a photo of {a} {}",
    "a picture of {a} {}",
    "an image of {a} {}",
    "a grayscale image of {a} {}",
    "a black and white photo of {a} {}",
    "a low-resolution photo of {a} {}",
    "a small photo of {a} {}",
    "{a} small {} on a black background",
    "{a} {} on a black background",
    "a product photo of {a} {}",
    "a catalog picture of {a} {}",
    "a thumbnail of {a} {}",
    "a centered photo of {a} {}",
    "a 28x28 image of {a} {}",
    "a close-up of {a} {}",
    "a fashion photo of {a} {}",
    "a photo of a single {}",
    "this is {a} {}",
    "{a} grayscale {}",
)

_DIGIT_TEMPLATES = (
    "{}",
    "{a} {}",
    "the {}",
    "a handwritten {}",
    "{a} {} written by hand",
    "a photo of {a} {}",
    "a picture of a handwritten {}",
    "an image of {a} {}",
    "a grayscale image of {a} {}",
    "a scan of a handwritten {}",
    "{a} {} on a black background",
    "{a} white {} on a black background",
    "a black and white picture of {a} {}",
    "{a} {} written with a pen",
    "a low-resolution image of {a} {}",
    "a neat handwritten {}",
    "a messy handwritten {}",
    "a 28x28 image of {a} {}",
    "this is {a} {}",
)

# ---------------------------------------------------------------------------------------------
# Paraphrases for evaluation, never used in training: they avoid the class's own names
# (no "sneaker", no "seven"), so following them needs the text encoder's sense of meaning,
# not memorised wording. Keys are the dataset's labels.

_FASHION_HELD_OUT: tuple[tuple[str, ...], ...] = (
    (  # T-shirt/top
        "a plain cotton garment with short sleeves",
        "casual upperwear for a hot summer day",
        "a short-sleeved piece of clothing with a round neck",
    ),
    (  # Trouser
        "clothing that covers both legs",
        "legwear for the office",
        "long garments worn from the waist down to the ankles",
    ),
    (  # Pullover
        "a warm knitted garment with long sleeves",
        "something cozy to pull over your head when it is cold",
        "a woolly long-sleeved layer for chilly days",
    ),
    (  # Dress
        "a one-piece garment for a woman, with a skirt",
        "what a bridesmaid might wear",
        "an elegant outfit for a summer party",
    ),
    (  # Coat
        "outerwear for cold and rainy weather",
        "something heavy to wear outside in winter",
        "a long garment with buttons worn over other clothes",
    ),
    (  # Sandal
        "open footwear for the beach",
        "light summer footwear with straps that shows your toes",
        "what you wear on your feet at the seaside",
    ),
    (  # Shirt
        "a formal garment with buttons down the front and a collar",
        "what a man wears under a suit and tie",
        "a long-sleeved piece of office clothing with buttons",
    ),
    (  # Sneaker
        "footwear for running",
        "something to wear on your feet when jogging",
        "rubber-soled lace-ups for sports",
    ),
    (  # Bag
        "something to carry your things in",
        "an accessory for carrying a wallet and keys",
        "a container with a handle or a strap",
    ),
    (  # Ankle boot
        "sturdy footwear for autumn",
        "footwear that covers the foot up to just above the ankle",
        "a heeled leather shoe that reaches the ankle",
    ),
)

_DIGIT_HELD_OUT: tuple[tuple[str, ...], ...] = (
    (
        "an oval loop that stands for nothing",
        "how many legs a fish has, as a digit",
        "the digit for none",
    ),
    (
        "a digit drawn as a single straight line",
        "how many noses a person has, as a digit",
        "the first counting number",
    ),
    (
        "how many eyes a person has, written as a digit",
        "the number of wheels on a bicycle",
        "the digit for a pair",
    ),
    ("the number of sides of a triangle", "how many wheels a tricycle has", "the digit for a trio"),
    ("the number of legs of a dog", "how many sides a square has", "the digit for a quartet"),
    (
        "how many fingers are on a hand",
        "the number of points on a star",
        "the digit halfway to ten",
    ),
    (
        "the number of legs an insect has",
        "how many sides a hexagon has",
        "half a dozen, as a digit",
    ),
    (
        "how many days are in a week",
        "the number of colours in a rainbow",
        "the number of dwarfs in Snow White",
    ),
    (
        "how many legs a spider has",
        "the number of sides of an octagon",
        "the digit shaped like a snowman",
    ),
    (
        "the largest single digit",
        "how many lives a cat is said to have",
        "the digit just below ten",
    ),
)

_DATASETS = {
    # dataset: (standard class names, aliases, names per class, templates, held-out prompts)
    "fashion_mnist": (
        fashion_mnist.CLASS_NAMES,
        fashion_mnist.CLASS_ALIASES,
        _FASHION_NAMES,
        _FASHION_TEMPLATES,
        _FASHION_HELD_OUT,
    ),
    "mnist": (
        mnist.CLASS_NAMES,
        mnist.CLASS_ALIASES,
        _DIGIT_NAMES,
        _DIGIT_TEMPLATES,
        _DIGIT_HELD_OUT,
    ),
    # scikit-learn's 8x8 digits are the same ten classes, so the same captions.
    "digits": (
        mnist.CLASS_NAMES,
        mnist.CLASS_ALIASES,
        _DIGIT_NAMES,
        _DIGIT_TEMPLATES,
        _DIGIT_HELD_OUT,
    ),
}


# ---------------------------------------------------------------------------------------------
# Building captions


def indefinite_article(word: str) -> str:
    """ "a" or "an" for the word that follows, by sound: "an ankle", "a one", "an 8", "a uniform".

    Covers the words in this file's names and templates; English has more exceptions
    ("an hour", "a European") than a rule can hold.
    """
    w = word.lower()
    if w[:1].isdigit():
        # Spoken digits: only "eight" (and eleven, eighteen, eighty...) starts with a vowel.
        return "an" if w.startswith("8") or re.match(r"1[18]\D*$", w) else "a"
    if w.startswith(("one", "once", "uni", "use", "usu", "eu", "ewe")):
        return "a"  # a vowel letter sounding like "w" or "y"
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"  # a silent h
    return "an" if w[:1] in "aeiou" else "a"


def render(template: str, name: str) -> str:
    """Fill a template with a class name; each ``{a}`` becomes the article of the next word."""
    bare = name.removeprefix("pair of ")  # "{}" alone: "trousers", not "pair of trousers"
    text = bare if template == "{}" else template.replace("{}", name)
    return re.sub(r"\{a\} (\S+)", lambda m: f"{indefinite_article(m[1])} {m[1]}", text)


def _lookup(dataset: str) -> tuple:
    if dataset not in _DATASETS:
        raise ValueError(
            f"no captions for dataset {dataset!r}: datasets with captions are "
            f"{', '.join(CAPTIONED_DATASETS)} (for others, give captions of your own)"
        )
    return _DATASETS[dataset]


def _standard_labels(dataset: str, class_names: Sequence[str] | None) -> list[int]:
    """The dataset's standard label of each of ``class_names`` (a subset or reordering, as
    ``data.classes`` makes), by name or alias; None: all classes in the standard order."""
    names, aliases, *_ = _lookup(dataset)
    if class_names is None:
        return list(range(len(names)))
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a sequence of names, got one string {class_names!r}")
    return [resolve_class(c, names, aliases) for c in class_names]


def class_captions(dataset: str, class_names: Sequence[str] | None = None) -> list[list[str]]:
    """All distinct training captions of each class: ``captions[label]`` is a list of str.

    ``class_names``: the classes of the loaded data, in its label order (e.g. a
    ``data.classes`` subset such as ``("Sneaker", "Bag")``); None: the dataset's own ten.
    ValueError for a dataset without captions (the message lists those that have them) or
    for a class name the dataset does not have.
    """
    _, _, names, templates, _ = _lookup(dataset)
    out = []
    for label in _standard_labels(dataset, class_names):
        # dict.fromkeys: drop repeats, keep the order (reproducible caption indices).
        captions = dict.fromkeys(render(t, n) for n in names[label] for t in templates)
        out.append(list(captions))
    return out


def held_out_prompts(
    dataset: str, class_names: Sequence[str] | None = None
) -> dict[int, list[str]]:
    """3-5 paraphrases per class that no training caption contains, keyed by label (in the
    order of ``class_names``, as :func:`class_captions`): prompts for measuring whether a
    model follows wording it was never trained on."""
    held_out = _lookup(dataset)[4]
    labels = _standard_labels(dataset, class_names)
    return {i: list(held_out[label]) for i, label in enumerate(labels)}


@dataclass(frozen=True)
class CaptionTable:
    """Every distinct caption once (``texts``), and per class the indices of its captions
    (``by_class[label]``), so a trainer encodes each caption a single time and then draws
    caption indices per batch with :meth:`pick`."""

    texts: list[str]
    by_class: list[list[int]]

    def __post_init__(self) -> None:
        n = len(self.texts)
        for label, indices in enumerate(self.by_class):
            if not indices:
                raise ValueError(f"CaptionTable: class {label} has no captions")
            bad = [i for i in indices if not 0 <= i < n]
            if bad:
                raise ValueError(
                    f"CaptionTable: class {label} refers to caption {bad[0]}; allowed 0..{n - 1}"
                )
        # Padded (classes, most captions) index table and counts, for a vectorised pick.
        width = max(len(ix) for ix in self.by_class)
        table = torch.tensor([ix + [ix[0]] * (width - len(ix)) for ix in self.by_class])
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_counts", torch.tensor([len(ix) for ix in self.by_class]))

    @classmethod
    def from_captions(cls, captions: Sequence[Sequence[str]]) -> CaptionTable:
        """From per-class caption lists (:func:`class_captions`); a caption that two classes
        share is stored once and belongs to both."""
        index: dict[str, int] = {}
        by_class = [[index.setdefault(c, len(index)) for c in dict.fromkeys(cs)] for cs in captions]
        return cls(texts=list(index), by_class=by_class)

    @property
    def num_classes(self) -> int:
        return len(self.by_class)

    def pick(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A uniformly random caption of each label: LongTensor ``(B,)`` of indices into
        :attr:`texts`, on ``labels``' device. The draw uses ``generator`` (on the CPU), so
        the same seed gives the same captions."""
        if labels.ndim != 1 or labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be an int64 tensor (B,), got {labels.dtype} {tuple(labels.shape)}"
            )
        cpu = labels.cpu()
        if len(cpu) and (cpu.min() < 0 or cpu.max() >= self.num_classes):
            raise ValueError(
                f"labels must be in 0..{self.num_classes - 1}, got values "
                f"{cpu.min().item()}..{cpu.max().item()}"
            )
        u = torch.rand(len(cpu), generator=generator)  # (B,), one draw per sample
        which = (u * self._counts[cpu]).long().clamp_max(self._counts[cpu] - 1)
        return self._table[cpu, which].to(labels.device)

    def captions_of(self, label: int) -> list[str]:
        """The captions of one class."""
        return [self.texts[i] for i in self.by_class[label]]


def caption_table(dataset: str, class_names: Sequence[str] | None = None) -> CaptionTable:
    """:class:`CaptionTable` of :func:`class_captions`."""
    return CaptionTable.from_captions(class_captions(dataset, class_names))
