"""What relation guidance costs a relation prompt on the shipped `shapes-text`: wall-clock
seconds per image, with and without, alternated in one process (one thread).

    python bench/relation_guidance_cost.py
"""

from __future__ import annotations

import argparse
import time

import torch

from difflab.pipeline import Generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="a green circle above a purple triangle")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    gen.generate(2, prompt=args.prompt, steps=2)  # load the text encoder, warm the caches
    seconds: dict[float, list[float]] = {0.0: [], 30.0: []}
    for _ in range(args.rounds):
        for scale in seconds:
            start = time.perf_counter()
            gen.generate(args.images, prompt=args.prompt, seed=0, relation_guidance=scale)
            seconds[scale].append((time.perf_counter() - start) / args.images)
    for scale, s in seconds.items():
        print(f"relation guidance {scale:g}: {min(s):.3f} s per image (best of {args.rounds}; "
              f"all {', '.join(f'{x:.3f}' for x in s)})")
    print(f"ratio {min(seconds[30.0]) / min(seconds[0.0]):.2f}")


if __name__ == "__main__":
    main()
