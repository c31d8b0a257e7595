"""Training-free relation guidance from cross-attention maps, tried on the shipped `shapes-text`.

The shipped model draws held-out relation pairs on the wrong axis: "a circle left of a square"
comes out as a circle above a square (circle-square is only ever vertical in training), "a
square above a triangle" side by side. This asks whether guiding the sampler with the model's
own cross-attention maps moves the objects, as in Epstein et al. (2023, "Diffusion
Self-Guidance": an energy on the centroid of a word's attention map, eps~ = eps + s sigma_t
grad g) and Chen et al. (2024, "Training-free layout control with cross-attention guidance":
backward guidance, a few gradient steps on x_t toward each word's box).

Energies, on the 8x8 maps of the two shape words (all heads and 8x8 layers averaged):
- `centroid`: relu(margin - gap), gap = the second word's centroid minus the first's along
  the relation's axis, in image widths;
- `box`: (1 - share of the first word's map in its half)^2 + (the same for the second).
Modes: `eps` adds s sigma_t grad E to the prediction (self-guidance); `back` takes `--iters`
steps x <- x - s grad E before calling the model (backward guidance).

The prompt sets are written here for the purpose and are disjoint from the 99 test prompts
(checked): 8 prompts of the held-out relation pairs, with other colours and wordings than the
test prompts, and 8 relation prompts of pairs the training scenes do relate. The test prompts
are not used.

    python bench/shapes_attention_guidance.py \
        --out bench/results/shapes_attention_guidance/sweep.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
from collections import Counter

import torch

from difflab.data.shapes import geneval_prompts
from difflab.data.shapes_grammar import held_out_in_spec, parse_prompt
from difflab.diffusion.denoiser import Prediction, network_denoiser
from difflab.diffusion.process import as_time
from difflab.metrics.geneval import score_images
from difflab.models.text import _tokenizer
from difflab.pipeline.generator import Generator

HELD_OUT = [
    "a yellow circle to the left of a green square",
    "an orange circle right of a blue square",
    "a red square on the left of a purple circle",
    "a blue square to the right of a yellow circle",
    "a green square above a purple triangle",
    "a red square beneath a blue triangle",
    "a red triangle over a yellow square",
    "a green triangle under an orange square",
]
SEEN = [
    "a blue circle above a red square",
    "a blue circle below a yellow square",
    "a purple circle to the left of a red triangle",
    "a red circle right of a yellow triangle",
    "a blue square to the left of a red triangle",
    "an orange square to the right of a yellow triangle",
    "a red triangle above a blue circle",
    "a yellow triangle beneath a red circle",
]
SHAPE_WORDS = ("circle", "square", "triangle")
# relation word piece -> (axis of the 8x8 map: 0 rows, 1 columns; +1: the first word first)
RELATION_PIECES = {"left": (1, 1), "right": (1, -1), "above": (0, 1), "over": (0, 1),
                   "top": (0, 1), "below": (0, -1), "under": (0, -1), "beneath": (0, -1)}

ARMS = ["eps:centroid:0", "eps:centroid:30", "eps:centroid:100", "eps:centroid:300",
        "eps:box:30", "eps:box:100", "back:box:1", "back:box:5"]
attention = importlib.import_module("difflab.models.attention")
_captured: list[torch.Tensor] | None = None
_forward = attention.CrossAttention.forward


def _recording_forward(self, x, context=None, context_mask=None):
    """CrossAttention.forward, keeping the 8x8 text-attention probabilities (with their
    graph) while `_captured` is a list."""
    if _captured is not None and context is not None and context.shape[1] > 1 and x.shape[1] == 64:
        q, k = self._heads(self.to_q(x)), self._heads(self.to_k(context))
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask.bool()[:, None, None, :], float("-inf"))
        _captured.append(scores.softmax(-1).mean(1))  # (B, 64, L)
    return _forward(self, x, context, context_mask)


class RelationGuided:
    """A denoiser guided by an energy on two words' cross-attention maps (module docstring)."""

    def __init__(self, den, conditional, words: tuple[int, int], axis: int, sign: int,
                 args: argparse.Namespace):
        self.den, self.conditional, self.process = den, conditional, den.process
        self.words, self.axis, self.sign, self.args = list(words), axis, sign, args

    def energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        global _captured
        _captured = []
        try:
            self.conditional(x, t)
            maps = torch.stack(_captured).mean(0)[:, :, self.words]
        finally:
            _captured = None
        maps = (maps / maps.sum(1, keepdim=True)).reshape(x.shape[0], 8, 8, 2)
        along = maps.sum(2 - self.axis)  # (B, 8, 2): each word's mass along the axis
        pos = (torch.arange(8.0) + 0.5) / 8
        if self.args.energy == "box":
            first = (pos < 0.5).float()[None]
            a_box, b_box = (first, 1 - first) if self.sign > 0 else (1 - first, first)
            a_in, b_in = (along[:, :, 0] * a_box).sum(1), (along[:, :, 1] * b_box).sum(1)
            return ((1 - a_in) ** 2 + (1 - b_in) ** 2).sum()
        centre = (along * pos[None, :, None]).sum(1)
        gap = self.sign * (centre[:, 1] - centre[:, 0])
        return torch.relu(self.args.margin - gap).sum()

    def grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(self.energy(x, t), x)[0]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> Prediction:
        tt = as_time(t, x.shape[0], x.device)
        if self.args.scale == 0 or float(self.process.sigma_ve(tt)[0]) <= self.args.sigma_low:
            return self.den(x, t)
        if self.args.mode == "back":
            moved = x.detach()
            for _ in range(self.args.iters):
                moved = moved - self.args.scale * self.grad(moved, t)
            p = self.den(moved, t)
            return Prediction(p.x0, self.process.eps_from_x0(x, tt, p.x0))
        p = self.den(x, t)
        _, sigma = self.process.coefficients(tt, x)
        eps = p.eps + self.args.scale * sigma * self.grad(x, t)
        return Prediction(self.process.x0_from_eps(x, tt, eps), eps)


def relation_words(prompt: str, tokenizer) -> tuple[tuple[int, int], int, int]:
    """The context positions of the two shape words (after the pooled token) and the axis."""
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])
    shapes = [i + 1 for i, p in enumerate(pieces) if p.rstrip("s") in SHAPE_WORDS]
    axis, sign = next(RELATION_PIECES[p] for p in pieces if p in RELATION_PIECES)
    return (shapes[0], shapes[-1]), axis, sign


def run(gen: Generator, prompts: list[str], args: argparse.Namespace) -> dict:
    tokenizer = _tokenizer()
    build = Generator._denoiser
    images, texts = [], []
    try:
        for prompt in prompts:
            words, axis, sign = relation_words(prompt, tokenizer)

            def guided(self, net, guide, labels, guidance, clip, *, text, **kw):
                den = build(self, net, guide, labels, guidance, clip, text=text, **kw)
                cond = network_denoiser(net, self.process, self.parameterization, cond=text)
                return RelationGuided(den, cond, words, axis, sign, args)  # noqa: B023

            Generator._denoiser = guided
            images.append(gen.generate(args.images_per_prompt, prompt=prompt, seed=args.seed))
            texts += [prompt] * args.images_per_prompt
    finally:
        Generator._denoiser = build
    report = score_images(torch.cat(images), texts)
    why = Counter(r["why"].split(":")[0] for r in report["results"] if not r["correct"])
    return {"position": report["categories"]["position"]["accuracy"],
            "correct": report["categories"]["position"]["correct"],
            "images": report["categories"]["position"]["images"],
            "failures": dict(why.most_common(5))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="shapes-text")
    ap.add_argument("--images-per-prompt", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.3)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--sigma-low", type=float, default=0.5, help="guide only above this sigma")
    ap.add_argument("--arms", nargs="*", default=ARMS, metavar="MODE:ENERGY:SCALE")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    test = {p.text() for ps in geneval_prompts().values() for p in ps}
    assert not test & set(HELD_OUT + SEEN), "the sets must be disjoint from the test prompts"
    assert all(held_out_in_spec(parse_prompt(p)) for p in HELD_OUT)
    assert not any(held_out_in_spec(parse_prompt(p)) for p in SEEN)
    torch.set_num_threads(1)
    attention.CrossAttention.forward = _recording_forward
    gen = Generator.from_checkpoint(args.checkpoint)
    rows = []
    for arm in args.arms:
        mode, energy, scale = arm.split(":")
        args.mode, args.energy, args.scale = mode, energy, float(scale)
        row = {"mode": mode, "energy": energy, "scale": scale,
               "held_out_pairs": run(gen, HELD_OUT, args), "seen_pairs": run(gen, SEEN, args)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"cpu": platform.processor() or platform.machine(), "settings": vars(args),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
