"""FID against the number of network evaluations, for one trained model and several samplers.

The model is the shipped ``fashion-mnist`` checkpoint (``Generator.from_checkpoint``, EMA
weights). The reference row is DDPM ancestral sampling over all 1000 steps (Ho et al. 2020,
Alg. 2), the sampler the model's training objective is derived for; the fast samplers are
compared with it at 5, 10, 20, 50 and 100 network evaluations (NFE):

- DDIM, eta = 0 (Song et al. 2021), uniform grid: one evaluation per step;
- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), Karras grid: one per step;
- SDE-DPM-Solver++(2M) (the same solver for the reverse SDE, eta = 1: fresh noise every
  step, like DDPM's own sampler), Karras grid: one per step;
- Heun (Karras et al. 2022, Alg. 1), Karras grid: two per step except the last, so
  NFE = 2 steps - 1 and the rows read 5, 9, 19, 49, 99 (the nearest odd counts).

Every row draws the same N images from the same seeds (per-sample generators), so the rows
differ only by the sampler and their FIDs share most of their sampling noise; the ratio to the
DDPM-1000 FID is what the issue's goals are stated in. FID, KID, precision and recall come from
``difflab.metrics.evaluate_images`` against the 10,000 test images, in the feature space of
difflab's Fashion-MNIST classifier (no Inception weights offline): not comparable with
Inception FIDs, and biased upward at small N (compare rows, not other tables).

    OMP_NUM_THREADS=1 python bench/fid_vs_steps.py --samples 1000 --jobs 2

`--jobs K` draws each row in K one-thread processes (contiguous shards of the sample indices,
so the images are the same for any K); `--append` adds rows to an earlier run's JSON (same
samples and seed), so the expensive DDPM-1000 row can be drawn on its own.

Writes ``<out>.json`` after every row (so a cut-short run keeps what it finished) and
``<out>.png`` (FID against NFE, log x, DDPM-1000 as a horizontal line).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (5, 10, 20, 50, 100)
SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde", "ddim", "heun")


def steps_for(sampler: str, nfe: int) -> int:
    """Grid points giving at most `nfe` evaluations (EVALS_PER_STEP: NFE = e (steps-1) + 1)."""
    from difflab.samplers import EVALS_PER_STEP

    evals = EVALS_PER_STEP.get(sampler, 1)
    return (nfe - 1) // evals + 1


def nfe_of(sampler: str, steps: int) -> int:
    from difflab.samplers import EVALS_PER_STEP

    return EVALS_PER_STEP.get(sampler, 1) * (steps - 1) + 1


def draw_shard(checkpoint: str, sampler: str, steps: int, seed: int, first: int, n: int,
               batch: int) -> torch.Tensor:
    """Samples first..first+n-1 of a row, in this (one-thread) process."""
    from difflab.pipeline import Generator

    torch.set_num_threads(1)
    gen = Generator.from_checkpoint(checkpoint, device="cpu")
    return gen.generate(n, sampler=sampler, steps=steps, seed=seed, first=first,
                        batch_size=min(batch, n))


def draw(args: argparse.Namespace, sampler: str, steps: int) -> tuple[torch.Tensor, float]:
    """All samples of a row and the CPU seconds spent, over args.jobs processes."""
    if args.jobs == 1:
        c0 = time.process_time()
        images = draw_shard(args.checkpoint, sampler, steps, args.seed, 0, args.samples,
                            args.batch)
        return images, time.process_time() - c0
    import multiprocessing as mp

    bounds = [round(k * args.samples / args.jobs) for k in range(args.jobs + 1)]
    shards = [(args.checkpoint, sampler, steps, args.seed, a, b - a, args.batch)
              for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    before = os.times()
    with mp.get_context("spawn").Pool(len(shards)) as pool:
        images = torch.cat(pool.starmap(draw_shard, shards))
    after = os.times()
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("children_user", "children_system"))
    return images, cpu


def plot(rows: list[dict], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ref = next((r for r in rows if r["sampler"] == "ddpm"), None)
    if ref:
        ax.axhline(ref["fid"], color="k", ls="--", lw=1,
                   label=f"DDPM, 1000 steps: {ref['fid']:.2f}")
    for name in SAMPLERS:
        mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        if mine:
            ax.plot([r["nfe"] for r in mine], [r["fid"] for r in mine], "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(f"FID ({n} samples)")
    ax.set_title("shipped fashion-mnist model; features: difflab's Fashion-MNIST classifier",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="fashion-mnist")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--nfes", nargs="*", type=int, default=list(NFES))
    ap.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=SAMPLERS)
    ap.add_argument("--no-ddpm", action="store_true", help="skip the DDPM-1000 reference row")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--jobs", type=int, default=1, help="processes per row (one thread each)")
    ap.add_argument("--append", action="store_true",
                    help="add to <out>.json's rows (same --samples and --seed) instead of "
                         "starting afresh; a row drawn again replaces the old one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "fid_vs_steps",
                    help="path stem: writes <out>.json and <out>.png")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from difflab.metrics import evaluate_images
    from difflab.pipeline import Generator
    from difflab.samplers import DEFAULTS

    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv])
    print(f"command: {command}\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load average before: {[round(v, 2) for v in os.getloadavg()]}", flush=True)
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    plan = [] if args.no_ddpm else [("ddpm", gen.process.T)]
    plan += [(s, steps_for(s, n)) for s in args.samplers for n in args.nfes]

    rows: list[dict] = []
    json_path = args.out.with_suffix(".json")
    if args.append and json_path.exists():
        old = json.loads(json_path.read_text())
        if (old["samples"], old["seed"]) != (args.samples, args.seed):
            raise SystemExit(f"--append: {json_path} has samples={old['samples']}, "
                             f"seed={old['seed']}; this run has {args.samples}, {args.seed}")
        redrawn = set(plan)
        rows = [r for r in old["rows"] if (r["sampler"], r["steps"]) not in redrawn]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for sampler, steps in plan:
        t0 = time.perf_counter()
        images, cpu = draw(args, sampler, steps)
        wall = time.perf_counter() - t0
        rep = evaluate_images(images, "fashion_mnist", seed=args.seed)
        rows.append({
            "sampler": sampler, "steps": steps, "nfe": nfe_of(sampler, steps),
            "spacing": DEFAULTS[sampler][1], "fid": rep["fid"], "kid": rep["kid"],
            "kid_stderr": rep["kid_stderr"], "precision": rep["precision"],
            "recall": rep["recall"], "sample_cpu_s": cpu, "sample_wall_s": wall,
            "jobs": args.jobs, "command": command,
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "feature_space": rep["feature_space"],
        })
        print(f"{sampler:9s} steps {steps:4d} NFE {rows[-1]['nfe']:4d}: FID {rep['fid']:.3f} "
              f"({wall:.0f} s wall, {cpu:.0f} s CPU)", flush=True)
        json_path.write_text(json.dumps({
            "command": command, "checkpoint": str(args.checkpoint), "samples": args.samples,
            "seed": args.seed, "torch": torch.__version__, "rows": rows,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
        plot(rows, args.out.with_suffix(".png"), args.samples)

    ref = next((r["fid"] for r in rows if r["sampler"] == "ddpm"), None)
    print(f"\nFID of {args.samples} samples, shipped '{args.checkpoint}' model; features: "
          f"{rows[0]['feature_space']}; reference: the 10,000 test images.\n")
    print("| sampler (grid) | steps | NFE | FID | ÷ DDPM-1000 | KID x1e3 | precision | recall "
          "| CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['fid'] / ref:.3f}" if ref else "-"
        print(f"| {r['sampler']} ({r['spacing']}) | {r['steps']} | {r['nfe']} | {r['fid']:.3f} "
              f"| {ratio} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_stderr']:.2f} "
              f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['sample_cpu_s']:.0f} |")
    if ref:
        for name in ("dpmpp_2m", "dpmpp_2m_sde"):
            for n, bar in ((20, 1.05), (10, 1.15)):
                r = next((r for r in rows if r["sampler"] == name and r["nfe"] == n), None)
                if r:
                    verdict = "met" if r["fid"] <= bar * ref else "NOT met"
                    print(f"goal: {name} at {n} NFE within {100 * (bar - 1):.0f} % of "
                          f"DDPM-1000: {r['fid'] / ref:.3f} -> {verdict}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
