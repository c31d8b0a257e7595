"""Captions made from class names, for training text-to-image models on labelled datasets.

Fashion-MNIST and MNIST have labels, not captions. Each class gets a handful of names
(synonyms: "sneaker", "trainer", "athletic shoe", ...) that are put into sentence
templates ("a photo of {a} {}", "{a} {} on a black background", ...), and a few dozen
descriptions ("a shoe for the gym", "a lace-up shoe with a rubber sole") put into framing
templates ("a photo of {}"), which gives several hundred distinct captions per class (the
words are package data, caption_text/*.toml, read by :mod:`difflab.data.caption_words`; which
dataset has which words is in :mod:`difflab.data.catalog`). Training on varied wording and meaning,
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

from .caption_words import CaptionWords, caption_words
from .catalog import CAPTIONED_DATASETS, DatasetSpec, find_dataset

# ---------------------------------------------------------------------------------------------
# Building captions


def indefinite_article(word: str) -> str:
    """ "a" or "an" for the word that follows, by sound: "an ankle", "a one", "an 8", "a uniform".

    Covers the words in the caption words' names and templates; English has more exceptions
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


def _lookup(dataset: str) -> tuple[DatasetSpec, CaptionWords]:
    """The dataset's catalog entry and caption words; ValueError for one without captions."""
    spec = find_dataset(dataset)
    if spec is not None and spec.image_captions:
        raise ValueError(
            f"{spec.name} captions each image on its own, not per class: its caption table "
            "comes with the data (difflab.data.registry.dataset_caption_table)"
        )
    if spec is None or not spec.captions:
        raise ValueError(
            f"no captions for dataset {dataset!r}: datasets with captions are "
            f"{', '.join(CAPTIONED_DATASETS)} (for others, give captions of your own)"
        )
    words = caption_words(spec.captions)
    if words.class_names != spec.class_names:
        # The words are per label: another class order would caption every image wrongly.
        raise ValueError(
            f"caption words {spec.captions!r} are for classes {words.class_names}, but "
            f"{spec.name} has {spec.class_names}"
        )
    return spec, words


def _standard_labels(spec: DatasetSpec, class_names: Sequence[str] | None) -> list[int]:
    """The dataset's standard label of each of ``class_names`` (a subset or reordering, as
    ``data.classes`` makes), by name or alias; None: all classes in the standard order."""
    if class_names is None:
        return list(range(len(spec.class_names or ())))
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a sequence of names, got one string {class_names!r}")
    return spec.class_indices(class_names)


def class_captions(dataset: str, class_names: Sequence[str] | None = None) -> list[list[str]]:
    """All distinct training captions of each class: ``captions[label]`` is a list of str.

    ``class_names``: the classes of the loaded data, in its label order (e.g. a
    ``data.classes`` subset such as ``("Sneaker", "Bag")``); None: the dataset's own ten.
    ValueError for a dataset without captions (the message lists those that have them) or
    for a class name the dataset does not have.
    """
    spec, words = _lookup(dataset)
    out = []
    for label in _standard_labels(spec, class_names):
        named = (render(t, n) for n in words.names[label] for t in words.templates)
        described = (
            t.replace("{}", d)
            for d in words.descriptions[label]
            for t in words.description_templates
        )
        # dict.fromkeys: drop repeats, keep the order (reproducible caption indices).
        out.append(list(dict.fromkeys([*named, *described])))
    return out


def held_out_prompts(
    dataset: str, class_names: Sequence[str] | None = None
) -> dict[int, list[str]]:
    """10-20 paraphrases per class that are not training captions, keyed by label (in the
    order of ``class_names``, as :func:`class_captions`): prompts for measuring whether a
    model follows wording it was never trained on."""
    spec, words = _lookup(dataset)
    labels = _standard_labels(spec, class_names)
    return {i: list(words.held_out[label]) for i, label in enumerate(labels)}


def quotes_a_caption(prompt: str, captions: Sequence[str]) -> bool:
    """Whether ``prompt`` contains one of ``captions`` as whole words (case-insensitive).

    With a class's captions, which include its bare names ("sneaker", "seven", "7"), False
    means the prompt never names the class the way training did: following it takes the
    text encoder's sense of meaning."""
    low = prompt.lower()
    return any(re.search(rf"\b{re.escape(c.lower())}\b", low) for c in captions)


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


def quote_prompt(prompt: str, limit: int = 60) -> str:
    """A prompt as messages and titles quote it: whole when short, else its first `limit`
    characters and an ellipsis (a 600-word prompt must not fill the terminal or the grid)."""
    return repr(prompt if len(prompt) <= limit else prompt[:limit].rstrip() + "…")
