"""Peak memory of `difflab train` on a folder of large photos of mixed sizes, which it must
refuse (no data.image_size): how much it reads before the one-line error.

Twelve 4000x3000 JPEG photos (one 4008x3000), written to a temporary folder; the command runs
in its own process and its peak resident set (ru_maxrss of the child) is reported. The import
of torch and difflab alone is measured the same way, for scale.

    python bench/own_images_memory.py --out bench/results/own_images_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from shapes_geneval import cpu_line

# Runs the command as its only child and prints the child's peak resident set (KiB) last.
_MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_mib(command: list[str]) -> tuple[float, str]:
    """The peak resident set of `command` in MiB, and its last line of output before that."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                         text=True)
    lines = (out.stdout + out.stderr).strip().splitlines()
    kib = next(line for line in reversed(out.stdout.splitlines()) if line.strip().isdigit())
    said = [line for line in lines if line.strip() != kib]
    return int(kib) / 1024, said[-1] if said else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    difflab = str(Path(sys.executable).with_name("difflab"))
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        for i in range(12):
            w = 4008 if i == 1 else 4000
            small = rng.integers(0, 256, (30, w // 100, 3), dtype=np.uint8)  # smooth photos
            Image.fromarray(small).resize((w, 3000)).save(Path(folder) / f"{i}.jpg", quality=90)
        imports, _ = peak_mib([sys.executable, "-c", "import torch, difflab"])
        refused, said = peak_mib([difflab, "train", "fashion_mnist", "--set",
                                  "data.name=image_folder", "--set", f"data.root={folder!r}",
                                  "--out", str(Path(folder).parent / "own_images_memory_run"),
                                  "--steps", "1"])
    record = {"cpu": cpu_line(), "import_torch_difflab_mib": round(imports),
              "train_refusing_12_photos_mib": round(refused), "said": said}
    print(json.dumps(record, indent=1))
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
