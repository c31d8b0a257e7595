"""GenEval-style scores of a shapes text-to-image checkpoint against guidance scale and steps.

    OMP_NUM_THREADS=1 python bench/shapes_geneval.py [CHECKPOINT] [--guidance 1 3 5 7.5]
        [--steps 10 20 50] [--images-per-prompt 2]

Every image is checked by difflab's programmatic scorer (difflab.metrics.geneval; validated
at 100 % on rendered ground truth, docs/shapes.md) for the objects, counts, colours and
positions its prompt names. The prompts are the 99 held-out test prompts of
difflab.data.shapes.geneval_prompts (no training caption is one of them, and each names at
least one composition the training scenes never show, or a held-out wording).

The sweep is a cross: every guidance scale at the checkpoint's own step count, and every step
count at its own guidance (a full grid would cost their product). Each setting is scored on two
prompt sets: the held-out test prompts (the figures to report) and as many prompts drawn from
the training distribution (difflab.data.shapes.training_prompts: fresh scenes' captions, same
categories, no held-out composition), the set to choose the defaults on, so that the reported
set is never tuned on. The gap between the two is what the model has not learnt to compose.
Each setting draws with the same seed, so the rows differ only by the setting.

Writes ``bench/results/shapes_geneval.json`` (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from difflab.data.shapes import training_prompts
from difflab.evaluation import geneval_generator
from difflab.pipeline import Generator

ROOT = Path(__file__).resolve().parent.parent


def cpu_line() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    marks = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()} ({', '.join(marks)})"


def row_of(report: dict, prompts: str) -> dict:
    return {
        "prompts": prompts,
        **{k: report["sampling"][k] for k in ("sampler", "steps", "guidance", "seed")},
        "relation_guidance": report["sampling"].get("relation_guidance", 0),
        "binding_guidance": report["sampling"].get("binding_guidance", 0),
        "relation_regions": report["sampling"].get("relation_regions", False),
        "overall": report["overall"],
        "categories": {c: r["accuracy"] for c, r in report["categories"].items()},
        "images": sum(r["images"] for r in report["categories"].values()),
        # FID against scenes rendered for the same prompts (difflab.metrics.shapes_features)
        "fid": report["fid"]["fid"] if "fid" in report else None,
        "seconds": report["sampling"]["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="shapes-text")
    ap.add_argument("--guidance", type=float, nargs="*", default=[1.0, 3.0, 5.0, 7.5])
    ap.add_argument("--steps", type=int, nargs="*", default=[10, 20, 50])
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relation-guidance", type=float, default=0.0,
                    help="every row with this relation guidance (0: off)")
    ap.add_argument("--binding-guidance", type=float, default=0.0,
                    help="every row with this binding guidance (0: off)")
    ap.add_argument("--choosing-seed", type=int, default=1,
                    help="the seed that draws the prompts from the training distribution "
                    "(difflab.data.shapes.training_prompts; another seed, fresh prompts)")
    ap.add_argument("--relation-regions", action="store_true",
                    help="every row with relation regions (off without the flag)")
    ap.add_argument("--prompt-sets", nargs="*", default=["training", "held-out"],
                    choices=["training", "held-out"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shapes_geneval.json")
    args = ap.parse_args()

    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    base = gen.sampling_settings(None, None, None, conditioned=True)
    settings = [(base.steps, g) for g in args.guidance]
    settings += [(s, base.guidance) for s in args.steps if (s, base.guidance) not in settings]
    record = {
        "command": shlex.join([Path(sys.executable).as_posix(), *sys.argv]),
        "checkpoint": args.checkpoint, "cpu": cpu_line(),
        "images_per_prompt": args.images_per_prompt, "rows": [],
    }

    # Rows already in --out for this checkpoint and image count are kept, not drawn again, so
    # an interrupted sweep resumes where it stopped.
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if (old.get("checkpoint"), old.get("images_per_prompt"), old.get("choosing_seed", 1)) == (
        args.checkpoint, args.images_per_prompt, args.choosing_seed
    ):
        record["rows"] = old["rows"]

    # Each row states its attention guidance, 0 included: the checkpoint's default is not
    # taken in silence.
    relation = {"relation_guidance": args.relation_guidance,
                "binding_guidance": args.binding_guidance,
                "relation_regions": args.relation_regions}

    def run(prompts: str, steps: int, guidance: float, texts: list[str] | None) -> None:
        done = [r for r in record["rows"] if (r["prompts"], r["steps"], r["guidance"],
                r["seed"], r.get("relation_guidance", 0), r.get("binding_guidance", 0),
                r.get("relation_regions", False)) == (
                    prompts, steps, guidance, args.seed, args.relation_guidance,
                    args.binding_guidance, args.relation_regions)]
        if done:
            return
        report = geneval_generator(gen, images_per_prompt=args.images_per_prompt,
                                   seed=args.seed, prompts=texts, steps=steps,
                                   guidance=guidance, **relation)
        record["rows"].append(row_of(report, prompts))
        record["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        r = record["rows"][-1]
        print(f"{prompts} steps {steps} guidance {guidance:g}: overall {r['overall']:.3f} "
              f"({r['seconds']:.0f} s)", flush=True)

    training = [t for ts in training_prompts(per_category=16, seed=args.choosing_seed).values()
                for t in ts]
    record["choosing_seed"] = args.choosing_seed
    for steps, guidance in settings:
        if "training" in args.prompt_sets:
            run("training", steps, guidance, training)
        if "held-out" in args.prompt_sets:
            run("held-out", steps, guidance, None)

    cats = list(record["rows"][0]["categories"])
    print(f"\n{record['cpu']}; {args.images_per_prompt} images per prompt, "
          f"{base.sampler}, seed {args.seed}\n")
    print("| prompts | steps | guidance | " + " | ".join(cats) + " | overall | FID |")
    print("|---|---:|---:|" + "---:|" * (len(cats) + 2))
    for r in record["rows"]:
        cells = " | ".join(f"{100 * r['categories'][c]:.1f} %" for c in cats)
        fid = "" if r.get("fid") is None else f"{r['fid']:.2f}"
        print(f"| {r['prompts']} | {r['steps']} | {r['guidance']:g} | {cells} "
              f"| **{100 * r['overall']:.1f} %** | {fid} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
