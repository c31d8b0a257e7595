"""How much torch.compile saves a long sampling job on a CPU, and from how many images on.

`difflab eval` draws 10,000 images by default; `--compile auto` (difflab.pipeline.compiled)
sends them through torch.compile when the job is long enough to pay for the build. This
measures, for a shipped model at its own [sample] settings (fashion-mnist: 13 SDE steps, its
guide at 7 of them, 20 network calls an image):

- the build: the first compiled batch's time minus an eager batch's, with a cold kernel cache
  (a fresh TORCHINDUCTOR_CACHE_DIR, as a user's first evaluation);
- a batch's time eager and compiled, round-robin over several rounds (median), so the load
  of other processes hits both alike; the ratio is taken round by round;
- agreement: the compiled batch's uint8 images against the eager ones (same seed);
- what follows for an evaluation of N images: eager N/B batches against build + N/B compiled
  batches (a projection from the measured batch times, not a timed evaluation), and the
  break-even N.

One thread (`--threads 1`: the benches share a 2-core machine). Prints a markdown table and
the command, writes bench/results/eval_compile.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_compile.py [--model fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--batch", type=int, default=256, help="difflab eval's default batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "eval_compile.json")
    args = ap.parse_args()
    # A cold cache before torch is imported: inductor reads the variable when it builds.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    import numpy as np
    import torch

    from difflab.hardware import describe_cpu
    from difflab.pipeline import Generator

    torch.set_num_threads(args.threads)
    gen = Generator.from_checkpoint(args.model, device="cpu")
    settings = gen.sampling_settings(None, None, None, conditioned=False)

    def batch(compile: bool) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        images = gen.generate(args.batch, seed=0, batch_size=args.batch, compile=compile)
        return time.perf_counter() - start, images.numpy()

    first_eager, eager_images = batch(False)
    first_compiled, compiled_images = batch(True)
    eager, compiled = [first_eager], []
    for r in range(args.rounds):
        for compile in ((False, True) if r % 2 else (True, False)):
            (compiled if compile else eager).append(batch(compile)[0])
    t_eager, t_compiled = statistics.median(eager), statistics.median(compiled)
    build = first_compiled - t_compiled
    ratios = [e / c for e, c in zip(eager[1:], compiled, strict=True)]
    diff = np.abs(eager_images.astype(int) - compiled_images.astype(int))

    def minutes(n: int, compiled: bool) -> float:
        batches = n / args.batch
        return (build + batches * t_compiled if compiled else batches * t_eager) / 60

    break_even = build / (t_eager - t_compiled) * args.batch if t_eager > t_compiled else None
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": describe_cpu(),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "model": args.model,
        "sampler": settings.sampler, "steps": settings.steps,
        "autoguidance": settings.autoguidance,
        "batch": args.batch,
        "eager_batch_s": [round(x, 2) for x in eager],
        "compiled_batch_s": [round(x, 2) for x in compiled],
        "build_s": round(build, 1),
        "speedup_median": round(statistics.median(ratios), 3),
        "speedup_rounds": [round(x, 3) for x in ratios],
        "pixels_equal": float((diff == 0).mean()),
        "max_pixel_difference": int(diff.max()),
        "break_even_images": round(break_even) if break_even else None,
        "projected_minutes": {str(n): {"eager": round(minutes(n, False), 1),
                                       "compiled": round(minutes(n, True), 1)}
                              for n in (2_000, 10_000)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['command']}\n{report['cpu']}, torch {report['torch']}, {args.threads} "
          f"thread(s), load average {os.getloadavg()[0]:.1f}\n")
    print("| model, sampling | batch | eager s/batch | compiled s/batch | speedup (per round) "
          "| build s | break-even images | 2,000 images, min (eager / compiled) | 10,000 images, "
          "min | pixels equal |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    p = report["projected_minutes"]
    print(f"| {args.model}, {settings.sampler} {settings.steps} steps | {args.batch} | "
          f"{t_eager:.1f} | {t_compiled:.1f} | {report['speedup_median']:.2f} "
          f"({', '.join(f'{x:.2f}' for x in ratios)}) | {build:.0f} | "
          f"{report['break_even_images']:,} | {p['2000']['eager']} / {p['2000']['compiled']} | "
          f"{p['10000']['eager']} / {p['10000']['compiled']} | "
          f"{report['pixels_equal']:.4f} (max diff {report['max_pixel_difference']}) |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
