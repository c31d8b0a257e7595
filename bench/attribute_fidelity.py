"""Attribute fidelity of a Fashion-MNIST text-to-image pipeline: does a prompt's tone and
pattern change the image, in wording the model never saw (issue 18)?

    python bench/attribute_fidelity.py CHECKPOINT [--images-per-prompt 8] [--guidance G]
        [--sampler S] [--steps N] [--seed 0] [--batch-size 256] [--out PATH]

Prompts: ``difflab.data.fashion_attributes.held_out_attribute_prompts()``, two per (class,
tone, pattern) asked, in held-out synonyms ("charcoal", "hooped", "unadorned") and sentence
shapes that no training caption of ``data.captions = "attributes"`` uses: class + tone for
every class, class + tone + pattern and class + pattern for the six classes with a pattern.

Each prompt draws ``--images-per-prompt`` samples, judged by the very functions the captions
were written with (``fashion_attributes.measure``): tone accuracy over prompts that name a
tone, pattern accuracy over those that name a pattern (a striped image satisfies
"patterned"; an image whose pattern is in the unstated middle band satisfies none), and class
fidelity by difflab's Fashion-MNIST feature classifier, as bench/prompt_fidelity.py. Beside
each, the class prior: what a model that draws the asked-for class and ignores the attribute
would score, from the training images' own tones and patterns per class (chance is not 1/3:
two in three sandals are dark). Sampler, steps and guidance default to the checkpoint's.

For a latent model, also the ceiling its autoencoder sets: of ``--ceiling-images`` real test
images with each tone and pattern, the share whose reconstruction (encode, decode) is still
judged so. A decoder that smooths prints away caps pattern fidelity whatever the UNet learns.

Writes bench/results/attribute_fidelity_<name>.json (command, CPU, settings, every figure and
each prompt's) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from difflab.data import dataset_spec, load_fashion_mnist
from difflab.data.fashion_attributes import (
    NO_PATTERN,
    PATTERN_CLASSES,
    PATTERNS,
    TONES,
    AttributePrompt,
    group_captions,
    held_out_attribute_prompts,
    measure,
    pattern_satisfies,
    read_attribute_prompts,
)
from difflab.data.transforms import resize_images
from difflab.metrics.features import feature_extractor
from difflab.models.caption_bank import OutOfDomainPrompt
from difflab.pipeline import Generator

CLASSES = dataset_spec("fashion_mnist").class_names


def cpu() -> dict:
    """The CPU's model name and the flags that decide its speed (bf16, AVX-512, AVX2)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor() or "unknown", "flags": []}
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {
        "model": info.get("Model name", "unknown").strip(),
        "cpus": info.get("CPU(s)", "?").strip(),
        "flags": [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags],
        "torch_threads": torch.get_num_threads(),
    }


def class_priors() -> dict[int, dict[str, float]]:
    """Per class, the share of its training images of each tone, and of those that satisfy
    each pattern: the score of a model that draws the class and ignores the attribute."""
    images, labels = load_fashion_mnist("train")
    tones, patterns = measure(images)
    out = {}
    for c in range(len(CLASSES)):
        m = labels == c
        row = {t: float((tones[m] == i).mean()) for i, t in enumerate(TONES)}
        row |= {p: float(np.mean([pattern_satisfies(p, int(v)) for v in patterns[m]]))
                for p in PATTERNS}
        out[c] = row
    return out


def autoencoder_ceiling(gen: Generator, n: int) -> dict | None:
    """Per tone and pattern value: the share of the first ``n`` real test images with it
    (patterns: of PATTERN_CLASSES) whose autoencoder reconstruction is judged the same, and
    how many there were; None for a pixel-space model or ``n`` = 0."""
    if gen.autoencoder is None or n < 1:
        return None
    images, labels = load_fashion_mnist("test")
    images, labels = images[:n], labels[:n]
    rec = torch.cat([gen.to_pixels(gen.to_model_space(torch.from_numpy(images[i : i + 500])))
                     for i in range(0, len(images), 500)])
    (t0, p0), (t1, p1) = measure(images), measure(rec)
    fabric = np.isin(labels, PATTERN_CLASSES)
    out: dict = {"test_images": len(images), "tone": {}, "pattern": {}, "counts": {}}
    for i, t in enumerate(TONES):
        out["tone"][t] = float((t1[t0 == i] == i).mean())
        out["counts"][t] = int((t0 == i).sum())
    for i, p in enumerate(PATTERNS):
        kept = p1[fabric & (p0 == i)]
        out["pattern"][p] = (float(np.mean([pattern_satisfies(p, int(v)) for v in kept]))
                             if len(kept) else float("nan"))
        out["counts"][p] = len(kept)
    return out


def held_out(path: str | None) -> tuple[list[AttributePrompt], list[str]]:
    """The prompts to score and, for a file, those of its prompts left out because a training
    caption says the same (held-out wording only)."""
    if path is None:
        return list(held_out_attribute_prompts()), []
    captions = {c.lower() for group in group_captions() for c in group}
    prompts = read_attribute_prompts(path)
    return ([q for q in prompts if q.text.lower() not in captions],
            [q.text for q in prompts if q.text.lower() in captions])


def judge(prompts: list[AttributePrompt], images: torch.Tensor, n: int) -> list[dict]:
    """Per prompt: the share of its images of the asked tone, pattern and class."""
    x = images.numpy()
    if x.shape[1:] != (1, 28, 28):
        x = resize_images(x[:, :1], 28)
    tones, patterns = measure(x)
    predicted = np.asarray(feature_extractor("fashion_mnist").predict(torch.from_numpy(x)))
    rows = []
    for i, p in enumerate(prompts):
        s = slice(i * n, (i + 1) * n)
        row = {"prompt": p.text, "class": CLASSES[p.label], "tone": p.tone, "pattern": p.pattern,
               "class_ok": float((predicted[s] == p.label).mean()),
               "measured_tones": [TONES[t] for t in tones[s]],
               "measured_patterns": [PATTERNS[v] if v != NO_PATTERN else None
                                     for v in patterns[s]]}
        if p.tone is not None:
            row["tone_ok"] = float((tones[s] == TONES.index(p.tone)).mean())
        if p.pattern is not None:
            row["pattern_ok"] = float(np.mean([pattern_satisfies(p.pattern, int(v))
                                               for v in patterns[s]]))
            row["pattern_unstated"] = float((patterns[s] == NO_PATTERN).mean())
        rows.append(row)
    return rows


def summarise(rows: list[dict], priors: dict[int, dict[str, float]]) -> dict:
    """Mean accuracy per attribute and per value, with the class prior beside it."""
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    label = {name: i for i, name in enumerate(CLASSES)}
    out: dict = {"class_fidelity": mean([r["class_ok"] for r in rows])}
    for attr, values in (("tone", TONES), ("pattern", PATTERNS)):
        named = [r for r in rows if r[attr] is not None]
        out[attr] = {
            "accuracy": mean([r[f"{attr}_ok"] for r in named]),
            "class_prior": mean([priors[label[r["class"]]][r[attr]] for r in named]),
            "prompts": len(named),
            "per_value": {
                v: {"accuracy": mean([r[f"{attr}_ok"] for r in named if r[attr] == v]),
                    "class_prior": mean([priors[label[r["class"]]][v] for r in named
                                         if r[attr] == v]),
                    "class_fidelity": mean([r["class_ok"] for r in named if r[attr] == v]),
                    "prompts": sum(r[attr] == v for r in named)}
                for v in values
            },
        }
    out["pattern"]["unstated"] = mean([r["pattern_unstated"] for r in rows
                                       if r["pattern"] is not None])
    per_class = defaultdict(list)
    for r in rows:
        per_class[r["class"]].append(r["class_ok"])
    out["class_fidelity_per_class"] = {c: mean(v) for c, v in per_class.items()}
    return out


def table(summary: dict, ceiling: dict | None) -> str:
    lines = ["| attribute | value | prompts | accuracy | class prior | autoencoder keeps "
             "| class fidelity |", "|---|---|---|---|---|---|---|"]
    for attr in ("tone", "pattern"):
        s = summary[attr]
        for v, r in s["per_value"].items():
            keeps = f"{100 * ceiling[attr][v]:.1f} %" if ceiling else "–"
            lines.append(f"| {attr} | {v} | {r['prompts']} | {100 * r['accuracy']:.1f} % "
                         f"| {100 * r['class_prior']:.1f} % | {keeps} "
                         f"| {100 * r['class_fidelity']:.1f} % |")
        lines.append(f"| **{attr}** | all | {s['prompts']} | **{100 * s['accuracy']:.1f} %** "
                     f"| {100 * s['class_prior']:.1f} % | | |")
    lines.append(f"| **class** | all | | **{100 * summary['class_fidelity']:.1f} %** | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--images-per-prompt", type=int, default=8)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="guide only at these noise levels (default: the checkpoint's)")
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nearest-captions", type=int, default=None,
                   help="read prompts through K nearest training captions (default: the "
                   "checkpoint's; 0: the prompt's own embedding)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ceiling-images", type=int, default=2000,
                   help="real test images for the autoencoder's ceiling (0: skip)")
    p.add_argument("--prompts-file", default=None,
                   help="a prompt set written apart (bench/prompts/attribute_check.txt; "
                   "default: held_out_attribute_prompts()); its prompts that are training "
                   "captions are dropped")
    p.add_argument("--out", default=None, help="the .json to write")
    args = p.parse_args()
    if args.images_per_prompt < 1:
        raise SystemExit(f"--images-per-prompt must be at least 1, got {args.images_per_prompt}")
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print("command:", command, flush=True)
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    data = gen.config.get("run", {}).get("data", {})
    if not gen.takes_text or data.get("name") != "fashion_mnist":
        raise SystemExit(f"{args.checkpoint} is not a Fashion-MNIST text-to-image pipeline "
                         f"(its data: {data.get('name')!r})")
    settings = gen.sampling_settings(args.sampler, args.steps, args.guidance, conditioned=True,
                                     guidance_interval=args.guidance_interval)
    prompts, dropped = held_out(args.prompts_file)
    n = args.images_per_prompt
    far = gen.unfamiliar_prompts([q.text for q in prompts])
    if dropped:
        print(f"{len(dropped)} prompts of {args.prompts_file} are training captions, left out: "
              + ", ".join(repr(t) for t in dropped), flush=True)
    print(f"{len(prompts)} held-out prompts x {n} images; {settings.sampler} "
          f"{settings.steps} steps, guidance {settings.guidance} (interval "
          f"{settings.guidance_interval}); {len(far)} prompts flagged "
          "far from every training caption", flush=True)
    priors = class_priors()
    ceiling = autoencoder_ceiling(gen, args.ceiling_images)
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfDomainPrompt)  # counted above, once each
        images = gen.generate(
            len(prompts) * n, prompt=[q.text for q in prompts for _ in range(n)],
            sampler=settings.sampler, steps=settings.steps, guidance=settings.guidance,
            guidance_interval=settings.guidance_interval, seed=args.seed,
            batch_size=args.batch_size, nearest_captions=args.nearest_captions,
        )
    seconds = time.time() - start
    rows = judge(prompts, images, n)
    summary = summarise(rows, priors)
    name = Path(args.checkpoint.rstrip("/")).name
    if name == "last":
        name = Path(args.checkpoint.rstrip("/")).parent.name
    suffix = f"_{Path(args.prompts_file).stem}" if args.prompts_file else ""
    out = Path(args.out or f"bench/results/attribute_fidelity_{name}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": args.checkpoint,
        "captions": data.get("captions", "default"),
        "command": command,
        "cpu": cpu(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sampling": {"sampler": settings.sampler, "steps": settings.steps,
                     "guidance": settings.guidance,
                     "guidance_interval": settings.guidance_interval, "seed": args.seed,
                     "images_per_prompt": n, "images": len(images),
                     "nearest_captions": args.nearest_captions,  # None: the checkpoint's
                     "seconds": round(seconds, 1)},
        "prompts": args.prompts_file or "held_out_attribute_prompts()",
        "prompts_left_out_as_training_captions": dropped,
        "prompts_far_from_training_captions": [f.prompt for f in far],
        "pattern_classes": [CLASSES[c] for c in PATTERN_CLASSES],
        "class_priors": {CLASSES[c]: v for c, v in priors.items()},
        "autoencoder_ceiling": ceiling,
        "summary": summary,
        "per_prompt": rows,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{name}: {len(images)} images in {seconds:.0f} s on {report['cpu']['model']} "
          f"({', '.join(report['cpu']['flags'])}; {report['cpu']['torch_threads']} threads)\n")
    print(table(summary, ceiling))
    print(f"\npattern prompts whose image has no pattern stated (middle band): "
          f"{100 * summary['pattern']['unstated']:.1f} %")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
