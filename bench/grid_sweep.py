"""FID of a checkpoint against the shape of its sampler's Karras time grid.

    python bench/grid_sweep.py CHECKPOINT --grids 80:7 40:7 20:7 80:5 [--samples 2000]
        [--steps 13] [--interval LOW HIGH] [--reference train] --out FILE

Each grid is SIGMA_MAX:RHO, Karras et al. (2022) eq. 5: noise levels from sigma_max down to
the process's smallest, spaced by rho (larger rho: more of the steps at low noise). The
default grid is 80:7. At a fixed number of network calls the grid decides where the calls go,
so it is a free lever for few-step sampling. Everything else (sampler, steps, autoguidance
and its interval) is the checkpoint's [sample] setting unless given; the guide is called only
at the grid's noise levels inside the interval, so the call count can change with the grid
and is written beside each row. `--reference train` (10,000 training images) chooses without
looking at the test split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from difflab.evaluation import evaluate_generator
from difflab.hardware import describe_cpu
from difflab.pipeline import Generator
from difflab.samplers import default_timesteps


def parse_grid(text: str) -> tuple[float, float]:
    sigma_max, _, rho = text.partition(":")
    return float(sigma_max), float(rho or 7.0)


def network_calls(gen: Generator, steps: int, sampler: str, sigma_max: float, rho: float,
                  interval: tuple[float, float] | None, guided: bool) -> int:
    """Calls a sample costs: one a step, two where the guide is called (inside the interval)."""
    ts = default_timesteps(sampler, gen.process, steps, None, sigma_max, rho)
    sigmas = [float(gen.process.sigma_ve(t)) for t in ts]
    if not guided:
        return len(sigmas)
    low, high = interval if interval is not None else (0.0, float("inf"))
    return len(sigmas) + sum(low < s <= high for s in sigmas)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--grids", nargs="+", required=True, help="SIGMA_MAX:RHO, e.g. 80:7")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", choices=["test", "train"], default="train")
    p.add_argument("--out", required=True, help="the .json to write (rows also as .jsonl)")
    args = p.parse_args()
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    dataset = gen.config["run"]["data"]["name"]
    reference = {"reference_split": args.reference,
                 "n_reference": 10_000 if args.reference == "train" else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for grid in args.grids:
        sigma_max, rho = parse_grid(grid)
        t0 = time.time()
        r = evaluate_generator(gen, dataset, args.samples, steps=args.steps, seed=args.seed,
                               guidance_interval=args.interval, sigma_max=sigma_max, rho=rho,
                               **reference)
        s = r["sampling"]
        guided = s["autoguidance"] not in (None, 1.0)
        interval = tuple(s["guidance_interval"]) if s["guidance_interval"] else None
        calls = network_calls(gen, s["steps"], s["sampler"], sigma_max, rho, interval, guided)
        rows.append({"sigma_max": sigma_max, "rho": rho, "calls": calls, "fid": r["fid"],
                     "kid": r["kid"], "precision": r["precision"], "recall": r["recall"],
                     "sampling": s, "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
        with out.with_suffix(".jsonl").open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    report = {"checkpoint": args.checkpoint, "samples": args.samples, "seed": args.seed,
              "reference": args.reference, "cpu": describe_cpu(), "rows": rows,
              "feature_space": r["feature_space"]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| sigma_max | rho | calls | FID | precision | recall |\n|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['sigma_max']:g} | {row['rho']:g} | {row['calls']} | {row['fid']:.2f} "
              f"| {row['precision']:.3f} | {row['recall']:.3f} |")


if __name__ == "__main__":
    main()
