"""What the shipped `shapes-text`'s relation steering costs a relation prompt: wall-clock
seconds per image for each way of drawing it, alternated in one process (one thread).

Arms: `plain` (no relation or binding guidance, no regions), `guidance` (relation guidance 30
and binding guidance 15, no regions: the shipped sampling until relation regions), `regions`
(the shipped sampling: both guidances and relation regions).

    python bench/relation_guidance_cost.py
"""

from __future__ import annotations

import argparse
import time

import torch

from difflab.pipeline import Generator

ARMS = {
    "plain": {"relation_guidance": 0.0, "binding_guidance": 0.0, "relation_regions": False},
    "guidance": {"relation_guidance": 30.0, "binding_guidance": 15.0, "relation_regions": False},
    "regions": {"relation_guidance": 30.0, "binding_guidance": 15.0, "relation_regions": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="a green circle above a purple triangle")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    gen.generate(2, prompt=args.prompt, steps=2)  # load the text encoder, warm the caches
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm, settings in ARMS.items():
            start = time.perf_counter()
            gen.generate(args.images, prompt=args.prompt, seed=0, **settings)
            seconds[arm].append((time.perf_counter() - start) / args.images)
    for arm, s in seconds.items():
        print(f"{arm}: {min(s):.3f} s per image (best of {args.rounds}; "
              f"all {', '.join(f'{x:.3f}' for x in s)}); "
              f"{min(s) / min(seconds['plain']):.2f}x plain")


if __name__ == "__main__":
    main()
