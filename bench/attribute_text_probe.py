"""What the frozen text encoder says about tone and pattern in wording it was not trained on:
the ceiling a Fashion-MNIST attribute model's text side sets (issue 18).

    python bench/attribute_text_probe.py [--prompts-file bench/prompts/attribute_check.txt]

A model reading MiniLM's sentence embedding learns what the attribute words of its training
captions mean; for a held-out prompt it can only follow a tone or pattern that the embedding
of that prompt carries in the same directions. This measures that directly, without training
a diffusion model: a linear probe (multinomial logistic regression, L2-regularised, fitted by
L-BFGS) learns each attribute from the training captions' embeddings (labelled by the words
they state, ``fashion_attributes.stated_attributes``) and is read on held-out prompts, beside
the share whose nearest training caption (cosine) states the asked value. A probe accuracy well
below 85 % on a value says the text encoder, not the UNet, is where that value is lost.

Writes bench/results/attribute_text_probe[_<file stem>].json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from attribute_fidelity import cpu, held_out

from difflab.data.fashion_attributes import PATTERNS, TONES, group_captions, stated_attributes
from difflab.models.text import PretrainedTextEncoder

VALUES = {"tone": TONES, "pattern": PATTERNS}


def embed(texts: list[str], batch: int = 256) -> torch.Tensor:
    """MiniLM's normalised sentence embeddings, (N, 384)."""
    encoder = PretrainedTextEncoder(tokens="pooled")
    return torch.cat([encoder.encode(texts[i : i + batch]).tokens[:, 0]
                      for i in range(0, len(texts), batch)])


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3
              ) -> torch.nn.Linear:
    """Multinomial logistic regression with an L2 penalty on the weights, fitted to
    convergence by L-BFGS (a convex problem: the answer does not depend on the start)."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts-file", default=None,
                   help="a prompt set written apart (default: held_out_attribute_prompts())")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    captions = sorted({c for group in group_captions() for c in group})
    prompts, dropped = held_out(args.prompts_file)
    with torch.no_grad():
        cap_emb, prompt_emb = embed(captions), embed([q.text for q in prompts])
    nearest = (prompt_emb @ cap_emb.T).argmax(1).tolist()
    report: dict = {"command": command, "cpu": cpu(), "training_captions": len(captions),
                    "prompts": args.prompts_file or "held_out_attribute_prompts()",
                    "prompts_left_out_as_training_captions": dropped}
    lines = ["| attribute | value | prompts | linear probe | nearest caption states it |",
             "|---|---|---:|---:|---:|"]
    for attr, values in VALUES.items():
        # Captions that state exactly one value of this attribute train the probe.
        said = [stated_attributes(c)[attr] for c in captions]
        rows = [i for i, s in enumerate(said) if len(s) == 1]
        y = torch.tensor([values.index(next(iter(said[i]))) for i in rows])
        probe = fit_probe(cap_emb[rows], y, len(values))
        asked = [(j, q) for j, q in enumerate(prompts) if getattr(q, attr) is not None]
        with torch.no_grad():
            guess = probe(prompt_emb[[j for j, _ in asked]]).argmax(1).tolist()
        hits = [values[g] == getattr(q, attr) for g, (_, q) in zip(guess, asked, strict=True)]
        near = [getattr(q, attr) in said[nearest[j]] for j, q in asked]
        per_value = {}
        for v in values:
            idx = [k for k, (_, q) in enumerate(asked) if getattr(q, attr) == v]
            per_value[v] = {"prompts": len(idx),
                            "probe": sum(hits[k] for k in idx) / max(len(idx), 1),
                            "nearest_caption": sum(near[k] for k in idx) / max(len(idx), 1)}
            lines.append(f"| {attr} | {v} | {len(idx)} | {100 * per_value[v]['probe']:.1f} % "
                         f"| {100 * per_value[v]['nearest_caption']:.1f} % |")
        probe_all, near_all = sum(hits) / len(hits), sum(near) / len(near)
        lines.append(f"| **{attr}** | all | {len(asked)} | **{100 * probe_all:.1f} %** "
                     f"| {100 * near_all:.1f} % |")
        report[attr] = {"training_captions": len(rows), "probe": probe_all,
                        "nearest_caption": near_all, "per_value": per_value}
    suffix = f"_{Path(args.prompts_file).stem}" if args.prompts_file else ""
    out = Path(args.out or f"bench/results/attribute_text_probe{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{len(captions)} training captions, {len(prompts)} held-out prompts "
          f"({len(dropped)} left out as training captions)\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
