"""Relation guidance: steer where a prompt's two objects are drawn with the model's own
cross-attention maps, without training.

A prompt such as "a red circle to the left of a blue square" names two objects and a relation
between them. While sampling, each word's cross-attention map says where the network is
drawing it; the centroid of a map along the relation's axis is a differentiable summary of
that place. Self-guidance (Epstein et al. 2023, "Diffusion Self-Guidance for Controllable
Image Generation", eq. 3) adds the gradient of an energy on such properties to the noise
prediction:

    eps~ = eps + s * sigma_t * grad_x g(x_t),   g = relu(m - gap),

where gap is the second object's centroid minus the first's along the axis, in image widths
(positive when the relation holds) and m = RELATION_MARGIN asks for a clear gap. The energy
reads the conditional network's maps at the finest resolution that has cross-attention
(all those layers and heads averaged); guidance applies while the noise level sigma
(Karras et al.'s sigma_t / alpha_t) is above RELATION_SIGMA_LOW, where the layout is decided.
It costs one more conditional forward and backward pass a guided step.

What a prompt's relation is, is read from its words (:func:`find_relation`): two phrases
joined by left of / right of / above / over / on top of / below / under / beneath (with "to
the" and "on the" before left and right); each object is the last word of its phrase (linking
words such as "sitting" or "placed" before the relation skipped), and guidance follows all of
its word pieces. A prompt without such a relation is sampled as it
would be without guidance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from difflab.diffusion.denoiser import Denoiser, Prediction
from difflab.diffusion.process import as_time
from difflab.models.attention import recording_attention_maps

Tensor = torch.Tensor

RELATION_MARGIN = 0.3  # image widths between the two objects' centroids
RELATION_SIGMA_LOW = 0.5  # guide only at noise levels sigma above this

# relation words -> (axis, sign): axis 1 = across the columns (left-right), 0 = down the rows;
# sign +1 when the first object comes first along the axis (left of, above).
_RELATIONS = {
    "to the left of": (1, 1), "on the left of": (1, 1), "on the left side of": (1, 1),
    "left of": (1, 1),
    "to the right of": (1, -1), "on the right of": (1, -1), "on the right side of": (1, -1),
    "right of": (1, -1),
    "on top of": (0, 1), "above": (0, 1), "over": (0, 1),
    "underneath": (0, -1), "beneath": (0, -1), "below": (0, -1), "under": (0, -1),
}
_RELATION_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _RELATIONS), key=len, reverse=True)) + r")\b"
)
# Where the second phrase ends: a frame or another clause after it.
_PHRASE_END = re.compile(r"\s*(?:,|\band\b|\bon\b|\bin\b|\bwith\b|\bat\b)")
_WORD = re.compile(r"[a-z]+")
# Words between an object and its relation that are not the object ("a dog sitting under").
_LINKING = frozenset(
    "is are was sits sit sitting stands stand standing lies lying placed positioned located "
    "drawn shown floating hanging that which just right directly slightly far".split()
)


@dataclass(frozen=True)
class Relation:
    """Two object words of a prompt and where the first must be against the second."""

    first: str
    second: str
    axis: int
    sign: int


def find_relation(prompt: str) -> Relation | None:
    """The relation a prompt states between two objects (module docstring), or None."""
    text = prompt.lower()
    match = _RELATION_RE.search(text)
    if match is None:
        return None
    before = _WORD.findall(text[: match.start()])
    while before and before[-1] in _LINKING:
        before.pop()
    after_text = text[match.end():]
    end = _PHRASE_END.search(after_text)
    after = _WORD.findall(after_text[: end.start()] if end else after_text)
    if not before or not after:
        return None
    return Relation(before[-1], after[-1], *_RELATIONS[match.group(1)])


def describe_relation(prompt: str) -> str:
    """What guidance reads in `prompt`, for a command to print."""
    rel = find_relation(prompt)
    if rel is None:
        return (f"no relation read in {prompt!r} (two objects joined by left of, right of, "
                "above, below, on top of, under, ...); it is drawn without")
    where = {(1, 1): "left of", (1, -1): "right of", (0, 1): "above", (0, -1): "below"}
    return f"{rel.first!r} {where[rel.axis, rel.sign]} {rel.second!r}"


def word_positions(spans: list[tuple[int, int]], prompt: str, word: str,
                   last: bool) -> list[int]:
    """Positions among a prompt's word pieces (`spans`: each piece's characters, as
    PretrainedTextEncoder.piece_spans gives them) of the first or last `word` in it."""
    found = [m.span() for m in re.finditer(rf"\b{re.escape(word)}\b", prompt.lower())]
    if not found:
        return []
    start, end = found[-1] if last else found[0]
    return [i for i, (a, b) in enumerate(spans) if b > a and a >= start and b <= end]


@dataclass(frozen=True)
class RelationTarget:
    """One sample's relation as context positions of its two objects' word pieces."""

    first: list[int]
    second: list[int]
    axis: int
    sign: int


class RelationGuidedDenoiser:
    """Self-guidance of two objects' places (module docstring) around any denoiser `den`.
    `net` and `cond` are the conditional network and its text condition, whose maps are read;
    `targets` holds one RelationTarget (or None: unguided) per sample."""

    def __init__(self, den: Denoiser, net: torch.nn.Module, conditional: Denoiser,
                 targets: list[RelationTarget | None], scale: float):
        if scale < 0:
            raise ValueError(f"relation guidance must be >= 0, got {scale}")
        self.den, self.net, self.conditional = den, net, conditional
        self.targets, self.scale = targets, float(scale)
        self.process = den.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        p = self.den(x, t)
        tt = as_time(t, x.shape[0], x.device)
        guided = self.process.sigma_ve(tt).to(x.device) > RELATION_SIGMA_LOW
        if self.scale == 0 or not bool(guided.any()):
            return p
        grad = self.energy_gradient(x, t) * guided.view(-1, *[1] * (x.ndim - 1))
        _, sigma = self.process.coefficients(tt, x)
        eps = p.eps + self.scale * sigma * grad
        return Prediction(self.process.x0_from_eps(x, tt, eps), eps)

    def energy_gradient(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x of the summed energy of every sample with a target."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            with recording_attention_maps(self.net) as maps:
                self.conditional(x, t)
            energy = self.energy(maps)
            if not energy.requires_grad:  # no sample has a target
                return torch.zeros_like(x)
            return torch.autograd.grad(energy, x)[0]

    def energy(self, maps: list[Tensor]) -> Tensor:
        """sum over samples of relu(margin - gap) (module docstring)."""
        finest = max(m.shape[1] for m in maps)
        side = round(finest**0.5)
        mean = torch.stack([m for m in maps if m.shape[1] == finest]).mean(0)  # (B, N, L)
        pos = (torch.arange(side, device=mean.device, dtype=mean.dtype) + 0.5) / side
        total = mean.new_zeros(())
        for b, target in enumerate(self.targets):
            if target is None:
                continue
            centres = []
            for words in (target.first, target.second):
                m = mean[b, :, words].sum(-1)
                m = (m / m.sum().clamp_min(1e-12)).reshape(side, side)
                along = m.sum(dim=1 - target.axis)  # the mass along the axis
                centres.append((along * pos).sum())
            gap = target.sign * (centres[1] - centres[0])
            total = total + torch.relu(RELATION_MARGIN - gap)
        return total


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
        first = word_positions(spans, prompt, rel.first, last=False)
        second = word_positions(spans, prompt, rel.second, last=True)
        if not first or not second:
            targets.append(None)
            continue
        targets.append(RelationTarget([i + offset for i in first],
                                      [i + offset for i in second], rel.axis, rel.sign))
    return targets
