"""Prompt fidelity of a text-to-image pipeline: does it draw what the prompt asks for, even
in wording it never saw in training?

    python bench/prompt_fidelity.py PIPELINE [--per-prompt 50] [--guidance 1 3 5]
        [--sampler dpmpp_2m] [--steps 20] [--out bench/results/prompt_fidelity_NAME]

Two prompt sets per class of the pipeline's dataset (difflab.data.captions):
- held-out: paraphrases that are not training captions (``held_out_prompts``, e.g.
  "footwear for running" for sneakers), most written apart from the training captions; the
  "no class name" row scores the subset that never quotes a training caption of its class
  (its names included): only a text encoder that learned meaning elsewhere, i.e. a
  pretrained one, can map those to the right class;
- training: three of the captions the model was trained on, for reference;
- ``--prompts-file FILE.json`` adds a set named after the file: ``{class: [prompts]}``, the
  class by name or index; prompts that are training captions are dropped (and counted).
  ``bench/prompts/fashion_independent.json`` holds 80 Fashion-MNIST prompts written by an
  author who saw neither the training captions nor the held-out set.

For scale, the text encoder alone: each held-out prompt classified by its nearest training
caption (cosine of the pooled sentence embeddings), the readout a model that reads only the
pooled embedding would match if it interpolated between captions like a 1-NN classifier.

``--nearest-captions K ...`` repeats each row with prompts read through the pipeline's
caption bank (difflab.models.caption_bank: the blend of the K nearest training captions; 0 is
the prompt's own embedding); the default is 0 and the pipeline's own K, where it has a bank.

Each prompt draws ``--per-prompt`` samples; the dataset's feature classifier (difflab.metrics,
its test accuracy is printed; Inception weights cannot be had offline) judges each sample, and
fidelity is the share it assigns to the prompt's class. Guidance 1 is the plain conditional
model (no guidance); FID of each set against the test split sits beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from difflab.data import class_aliases
from difflab.data.base import resolve_class
from difflab.data.captions import class_captions, held_out_prompts, quotes_a_caption
from difflab.metrics.evaluate import evaluate_images
from difflab.metrics.features import feature_extractor
from difflab.pipeline import Generator


def prompt_sets(dataset: str, class_names: list[str]) -> dict[str, list[tuple[str, int]]]:
    held = held_out_prompts(dataset, class_names)
    train = class_captions(dataset, class_names)
    return {
        "held-out": [(p, c) for c, prompts in sorted(held.items()) for p in prompts],
        # three of each class's training captions, spread over its list
        "training": [
            (p, c) for c, caps in enumerate(train) for p in caps[:: max(1, len(caps) // 3)][:3]
        ],
    }


def file_prompts(
    path: Path, dataset: str, class_names: list[str]
) -> tuple[list[tuple[str, int]], int]:
    """(prompt, class) pairs from ``{class: [prompts]}`` JSON, without the training
    captions; and how many were dropped as training captions."""
    table = json.loads(path.read_text())
    aliases = class_aliases(dataset, class_names)
    captions = {c.lower() for caps in class_captions(dataset, class_names) for c in caps}
    pairs = [(p, resolve_class(c, class_names, aliases)) for c, ps in table.items() for p in ps]
    kept = [(p, c) for p, c in pairs if p.lower() not in captions]
    return kept, len(pairs) - len(kept)


def share(per_prompt: dict[str, float], keep: set[str]) -> float:
    """Mean of ``per_prompt``'s values over the prompts in ``keep``."""
    return sum(v for p, v in per_prompt.items() if p in keep) / len(keep)


def nearest_caption_readout(
    gen: Generator, captions: list[list[str]], pairs: list[tuple[str, int]]
) -> dict[str, float]:
    """Per prompt: 1.0 when its nearest training caption (pooled embeddings, cosine) is of
    its class, else 0.0."""
    def pooled(texts: list[str]) -> torch.Tensor:
        chunks = [gen.text_encoder.encode(texts[i : i + 512]).tokens[:, 0]
                  for i in range(0, len(texts), 512)]
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=1)

    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([k for k, caps in enumerate(captions) for _ in caps])
    nearest = (pooled([p for p, _ in pairs]) @ pooled(texts).T).argmax(dim=1)
    return {p: float(owner[j] == c) for (p, c), j in zip(pairs, nearest.tolist(), strict=True)}


def run(
    gen: Generator, dataset: str, pairs: list[tuple[str, int]], guidance: float, nearest: int,
    args,
) -> dict:
    prompts = [p for p, _ in pairs for _ in range(args.per_prompt)]
    labels = torch.tensor([c for _, c in pairs for _ in range(args.per_prompt)])
    images = gen.generate(
        len(prompts), prompt=prompts, guidance=None if guidance == 1 else guidance,
        sampler=args.sampler, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
        nearest_captions=nearest, guidance_interval=args.guidance_interval,
    )
    report = evaluate_images(images, dataset, labels)
    pred = torch.as_tensor(feature_extractor(dataset).predict(images))
    per_prompt = {
        p: float((pred[i * args.per_prompt : (i + 1) * args.per_prompt] == c).float().mean())
        for i, (p, c) in enumerate(pairs)
    }
    return {"fidelity": report["class_agreement"], "fid": report["fid"],
            "feature_space": report["feature_space"], "per_prompt": per_prompt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline")
    p.add_argument("--per-prompt", type=int, default=50)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="guide only at these noise levels (default: the checkpoint's)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--sets", nargs="*", default=["held-out", "training"])
    p.add_argument("--prompts-file", type=Path, action="append", default=[],
                   help="a further prompt set, JSON {class: [prompts]} (repeatable)")
    p.add_argument("--nearest-captions", type=int, nargs="+", default=None, metavar="K",
                   help="caption-bank readings to compare (default: 0 and the pipeline's own)")
    p.add_argument("--out", default=None, help="path prefix for .json and .png")
    args = p.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    gen = Generator.from_checkpoint(args.pipeline, device="cpu")
    if not gen.takes_text:
        raise SystemExit(f"{args.pipeline} is not a text-to-image pipeline")
    dataset = gen.config["run"]["data"]["name"]
    readings = args.nearest_captions or sorted({0, gen.nearest_captions()})
    sets = prompt_sets(dataset, gen.class_names)
    for path in args.prompts_file:
        sets[path.stem], dropped = file_prompts(path, dataset, gen.class_names)
        args.sets.append(path.stem)
        print(f"{path}: {len(sets[path.stem])} prompts ({dropped} dropped: training captions)")
    captions = class_captions(dataset, gen.class_names)
    nameless = {p for p, c in sets["held-out"] if not quotes_a_caption(p, captions[c])}
    readout = nearest_caption_readout(gen, captions, sets["held-out"])
    print(f"{len(sets['held-out'])} held-out prompts ({len(nameless)} without a class name); "
          f"text encoder alone, nearest training caption: "
          f"{100 * share(readout, set(readout)):.1f} % ({100 * share(readout, nameless):.1f} % "
          f"without a class name)", flush=True)
    out = Path(args.out or f"bench/results/prompt_fidelity_{Path(args.pipeline).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sets:
        for k in readings:
            for w in args.guidance:
                t0 = time.time()
                r = run(gen, dataset, sets[name], w, k, args)
                if name == "held-out":
                    r["fidelity_no_class_name"] = share(r["per_prompt"], nameless)
                rows.append({"prompts": name, "nearest_captions": k, "guidance": w,
                             "guidance_interval": args.guidance_interval, **r,
                             "seconds": round(time.time() - t0)})
                print(
                    f"{name:>9} K={k} w={w:g}: fidelity {100 * r['fidelity']:.1f} %, "
                    f"FID {r['fid']:.2f}"
                    + (f" (no class name: {100 * r['fidelity_no_class_name']:.1f} %)"
                       if name == "held-out" else ""),
                    flush=True,
                )
    report = {
        "pipeline": args.pipeline, "dataset": dataset, "per_prompt": args.per_prompt,
        "sampler": args.sampler, "steps": args.steps, "nearest_captions": readings,
        "rows": rows,
        "prompt_sets": {k: [[p, c] for p, c in v] for k, v in sets.items()},
        "held_out_without_class_name": sorted(nameless),
        "nearest_caption_readout": {"all": share(readout, set(readout)),
                                    "no_class_name": share(readout, nameless),
                                    "per_prompt": readout},
        "command": shlex.join(sys.argv),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(f"\nfeature space: {rows[0]['feature_space']}; {args.per_prompt} samples per prompt, "
          f"{args.sampler} {args.steps} steps\n")
    print("| prompts | nearest captions | guidance | fidelity | FID |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompts']} | {r['nearest_captions']} | {r['guidance']:g} "
              f"| {100 * r['fidelity']:.1f} % | {r['fid']:.2f} |")
        if r["prompts"] == "held-out":
            print(f"| held-out, no class name | {r['nearest_captions']} | {r['guidance']:g} "
                  f"| {100 * r['fidelity_no_class_name']:.1f} % | |")
    best = max((r for r in rows if r["prompts"] == "held-out"), key=lambda r: r["fidelity"],
               default=None)
    if best is not None:
        print(f"\nheld-out prompts at guidance {best['guidance']:g}, "
              f"{best['nearest_captions']} nearest captions:")
        for prompt, acc in best["per_prompt"].items():
            print(f"  {100 * acc:5.1f} %  {prompt}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in args.sets:
        for k in readings:
            sel = [r for r in rows if r["prompts"] == name and r["nearest_captions"] == k]
            reading = f", read via {k} nearest captions" if k else ""
            ax.plot([r["guidance"] for r in sel], [100 * r["fidelity"] for r in sel], "o-",
                    label=f"{name} prompts{reading}")
    ax.set_xlabel("guidance scale (1 = none)")
    ax.set_ylabel("samples of the prompt's class (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
