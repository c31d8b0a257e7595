"""A trial that was not adopted: laying out a relation by attention modulation, beside
relation guidance, on the shipped `shapes-text`.

Attention modulation (Kim et al. 2023, "Dense Text-to-Image Generation with Attention
Modulation", eq. 5, without their scaling by the score range): while sigma > 3 (the steps
where a scene's layout is decided), every cross-attention score of a query position to a word
piece of the relation's first phrase ("a red circle" in "a red circle to the left of a blue
square") gets +w where the query lies in that phrase's half of the picture (left, right, top or
bottom, by the relation) and -w elsewhere, and the second phrase the same on the other half.
It costs no extra pass. Relation guidance 30 and binding guidance 15 (the shipped defaults) are
on in every arm; w = 0 is the shipped sampling.

Two prompt sets: the 16 development prompts of bench/shapes_attention_guidance.py (8 of
held-out relation pairs, 8 of seen pairs; 8 images each; seeds 0 and 1), where w and the sigma
were chosen, and the 96 choosing prompts of bench/shapes_geneval.py (4 images each, seed 0),
where bench/results/shapes_attention_guidance/RULE_layout.md decided. The 99 test prompts are
not drawn. The modulation is patched in here (CrossAttention.forward and Generator's denoisers),
as bench/shapes_attention_guidance.py patches its energies, because it is not in the library.

    OMP_NUM_THREADS=1 python bench/relation_layout_trial.py \
        --out bench/results/shapes_attention_guidance/layout_trial.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import re

import torch
from shapes_attention_guidance import HELD_OUT, SEEN
from shapes_geneval import cpu_line

from difflab.data.shapes import training_prompts
from difflab.diffusion.process import as_time
from difflab.evaluation import geneval_generator
from difflab.metrics.geneval import score_images
from difflab.pipeline.attention_guidance import pieces_within
from difflab.pipeline.generator import Generator
from difflab.pipeline.relation_guidance import (
    _PHRASE_END,
    LINKING_WORDS,
    RELATION_RE,
    WORD_RE,
    find_relation,
)

attention = importlib.import_module("difflab.models.attention")
SIGMA = 3.0  # modulate while sigma_t / alpha_t is above this
_CLAUSE_BREAK = re.compile(r",|;|\band\b|\bwith\b", re.IGNORECASE)
_state: dict = {"weight": 0.0, "on": False, "targets": []}
_forward = attention.CrossAttention.forward
_text, _denoiser, _guided = Generator._text, Generator._denoiser, Generator._attention_guided


def phrases(prompt: str) -> tuple[tuple[int, int], tuple[int, int], int, int] | None:
    """The character spans of a relation's two phrases, its axis and sign: the first from the
    clause break before its object word, the second up to where the relation's phrase ends."""
    rel, match = find_relation(prompt), RELATION_RE.search(prompt)
    if rel is None:
        return None
    words = [w for w in WORD_RE.finditer(prompt, 0, match.start())]
    while words and words[-1].group().lower() in LINKING_WORDS:
        words.pop()
    start = max((m.end() for m in _CLAUSE_BREAK.finditer(prompt, 0, words[-1].start())),
                default=0)
    after = prompt[match.end():]
    ends = [m.start() for m in (_PHRASE_END.search(after), RELATION_RE.search(after)) if m]
    end = match.end() + min(ends, default=len(after))
    return (start, match.start()), (match.end(), end), rel.axis, rel.sign


def layout_bias(n: int, length: int) -> torch.Tensor | None:
    """The scores (B, n, length) to add for the batch's relations on a square grid."""
    side = round(n ** 0.5)
    if side * side != n or length < 2:
        return None
    centre = (torch.arange(side) + 0.5) / side
    bias = torch.zeros(len(_state["targets"]), n, length)
    for b, target in enumerate(_state["targets"]):
        if target is None:
            continue
        first, second, axis, sign = target
        along = (centre[:, None].expand(side, side) if axis == 0
                 else centre[None, :].expand(side, side)).reshape(n)
        half = (along < 0.5) if sign > 0 else (along >= 0.5)
        for tokens, inside in ((first, half), (second, ~half)):
            tokens = [i for i in tokens if i < length]
            bias[b][:, tokens] += _state["weight"] * (2 * inside.float() - 1)[:, None]
    return bias


def forward(self, x, context=None, context_mask=None):
    """CrossAttention.forward with the layout's scores added while the trial is on."""
    if not _state["on"] or context is None or _state["weight"] == 0:
        return _forward(self, x, context, context_mask)
    bias = layout_bias(x.shape[1], context.shape[1])
    if bias is None:
        return _forward(self, x, context, context_mask)
    q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(context)), \
        self._heads(self.to_v(context))
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias[: x.shape[0], None]
    if context_mask is not None:
        scores = scores.masked_fill(~context_mask.bool()[:, None, None, :], float("-inf"))
    p = scores.softmax(-1)
    if self.maps is not None:
        self.maps.append(p.mean(1))
    b, n = x.shape[:2]
    out = self.to_out((p @ v).transpose(1, 2).reshape(b, n, -1))
    if context_mask is not None:
        out = out * context_mask.bool().any(dim=1)[:, None, None].to(out.dtype)
    return out


class Gate:
    """A denoiser with the modulation on while sigma > SIGMA."""

    def __init__(self, den):
        self.den, self.process = den, den.process

    def __call__(self, x, t):
        tt = as_time(t, x.shape[0], x.device)
        _state["on"] = float(self.process.sigma_ve(tt)[0]) > SIGMA
        try:
            return self.den(x, t)
        finally:
            _state["on"] = False


def text(self, prompts, n, nearest=0):
    if prompts:  # the batch's relations, as context positions (one pooled token first)
        targets = []
        for prompt in prompts:
            read = phrases(prompt)
            spans = self.text_encoder.piece_spans(prompt)
            targets.append(None if read is None else (
                *([i + 1 for i in pieces_within(spans, *span)] for span in read[:2]),
                *read[2:]))
        _state["targets"] = targets
    return _text(self, prompts, n, nearest)


def patch() -> None:
    attention.CrossAttention.forward = forward
    Generator._text = text
    Generator._denoiser = lambda self, *a, **kw: Gate(_denoiser(self, *a, **kw))
    Generator._attention_guided = lambda self, den, *a, **kw: Gate(
        _guided(self, den.den if isinstance(den, Gate) else den, *a, **kw))


def development(gen: Generator, seed: int) -> dict:
    out = {}
    for name, prompts in (("held_out_pairs", HELD_OUT), ("seen_pairs", SEEN)):
        images = torch.cat([gen.generate(8, prompt=p, seed=seed, relation_guidance=30,
                                         binding_guidance=15) for p in prompts])
        report = score_images(images, [p for p in prompts for _ in range(8)])
        out[name] = report["categories"]["position"]["correct"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=float, nargs="*", default=[0.0, 8.0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    patch()
    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    choosing = [t for ts in training_prompts(per_category=16).values() for t in ts]
    rows = []
    for weight in args.weights:
        _state["weight"] = weight
        report = geneval_generator(gen, images_per_prompt=4, seed=0, prompts=choosing,
                                   steps=20, guidance=3.0, relation_guidance=30,
                                   binding_guidance=15)
        row = {"weight": weight, "sigma": SIGMA,
               "development": {s: development(gen, s) for s in (0, 1)},
               "choosing": {"overall": report["overall"],
                            **{c: r["accuracy"] for c, r in report["categories"].items()}}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"cpu": cpu_line(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
