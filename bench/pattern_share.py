"""How often a Fashion-MNIST model draws a print: the shares of its samples that the caption
rules call plain, patterned and striped, beside the same shares of the test images (issue 18).

    python bench/pattern_share.py [CHECKPOINT] [--samples 1000] [--test-images 2000]

A text model that is asked for "patterned" can only draw a print its network can draw. This
measures what an unconditional model draws unasked, by the very rules that wrote the
attribute captions (``fashion_attributes.measure``: edge density, stripe profile), so the
figure is comparable with attribute_fidelity.py's. Samples use the checkpoint's own [sample]
settings, seed 0. CHECKPOINT defaults to the shipped ``fashion-mnist``.

Writes bench/results/pattern_share_<name>.json and prints the shares.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from attribute_fidelity import cpu

from difflab.data import load_fashion_mnist
from difflab.data.fashion_attributes import NO_PATTERN, PATTERNS, measure
from difflab.pipeline import Generator


def shares(images: np.ndarray) -> dict[str, float]:
    """The share of `images` measured as each pattern, and as none (the middle band)."""
    _, pattern = measure(images)
    out = {name: float(np.mean(pattern == i)) for i, name in enumerate(PATTERNS)}
    out["none stated"] = float(np.mean(pattern == NO_PATTERN))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default="fashion-mnist")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--out", default=None, help="the .json to write")
    args = p.parse_args()
    test, _ = load_fashion_mnist("test")
    samples = Generator.from_checkpoint(args.checkpoint).generate(args.samples, seed=0).numpy()
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "cpu": cpu(),
        "checkpoint": args.checkpoint,
        "samples": {"n": args.samples, **shares(samples)},
        "test images": {"n": args.test_images, **shares(test[: args.test_images])},
    }
    for what in ("samples", "test images"):
        row = result[what]
        print(f"{what} ({row['n']}): " + ", ".join(
            f"{k} {100 * v:.1f} %" for k, v in row.items() if k != "n"))
    name = Path(args.checkpoint.rstrip("/")).name
    out = Path(args.out or f"bench/results/pattern_share_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
