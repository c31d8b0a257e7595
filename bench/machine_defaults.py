"""Training speed of the default preset for each precision and thread count, and what "auto"
picks: is the automatic choice within 10 % of the best manual one on this machine?

Every configuration runs real `Trainer.train_step`s (data, noise, forward, loss, backward,
AdamW, EMA) of `configs/fashion_mnist.toml` at its batch size, round-robin (each
configuration once per round, several rounds, median of the per-round images/s), so load from
other processes hits all of them alike. Then `Trainer.tuner.settle()` runs the start-up
timing of `train.precision = "auto"`, `train.threads = "auto"` several times, as a fresh run
would, and each pick is scored by the round-robin speed of the configuration it picked.

Run it as it is, and again with oneDNN capped at AVX2 to see a CPU without native bf16 (on
a CPU with AVX-512 BF16 this emulates the common laptop case; say so next to its figures):

    python bench/machine_defaults.py --out bench/results/machine_defaults_native.json
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/machine_defaults.py \\
        --out bench/results/machine_defaults_avx2.json --slow-steps 1

Writes a JSON with the CPU's name and flags, the load average, and every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from difflab import hardware
from difflab.config import load_config
from difflab.training.step_settings import label
from difflab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def make_trainer(out: Path, precision: str, threads: int | str, sets: list[str]) -> Trainer:
    cfg = load_config(
        ROOT / "configs" / "fashion_mnist.toml",
        [*sets, f"train.precision={precision}", f"train.threads={threads}"],
    )
    return Trainer(cfg, out, device="cpu", quiet=True)


def timed_steps(trainer: Trainer, threads: int, steps: int) -> float:
    """images/s of `steps` real optimisation steps (after one untimed step)."""
    torch.set_num_threads(threads)
    trainer.train_step(0.5)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(0.5)
    return steps * trainer.cfg.train.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per config per round")
    ap.add_argument("--slow-steps", type=int, default=None,
                    help="timed steps for emulated bf16 (a step can take a minute)")
    ap.add_argument("--settles", type=int, default=3, help="independent auto choices")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of the preset (as `difflab train --set`)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    native, why = hardware.cpu_native_bf16()
    cores = hardware.cpu_cores()
    threads_options = sorted({1, cores})
    tmp = Path(tempfile.mkdtemp(prefix="difflab-bench-"))
    configs = [(p, n) for p in ("fp32", "bf16") for n in threads_options]
    trainers = {c: make_trainer(tmp / label(*c), c[0], c[1], args.sets) for c in configs}
    speeds: dict[str, list[float]] = {label(*c): [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            steps = args.slow_steps if (c[0] == "bf16" and not native and args.slow_steps) \
                else args.steps
            ips = timed_steps(trainers[c], c[1], steps)
            speeds[label(*c)].append(ips)
            print(f"round {r}: {label(*c):>16} {ips:7.1f} images/s", flush=True)
    median = {k: statistics.median(v) for k, v in speeds.items()}
    best = max(median, key=median.get)
    picks = []
    for i in range(args.settles):
        tr = make_trainer(tmp / f"auto{i}", "auto", "auto", args.sets)
        t0 = time.perf_counter()
        s = tr.tuner.settle()
        cost = time.perf_counter() - t0
        key = label(s.precision, s.threads)
        picks.append({"pick": key, "seconds_to_choose": round(cost, 2), "why": s.why,
                      "images_per_sec": median[key],
                      "ratio_to_best": round(median[key] / median[best], 3)})
        print(f"auto #{i}: {key} in {cost:.1f} s -> {picks[-1]['ratio_to_best']:.3f} of best",
              flush=True)
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cpu": hardware.describe_cpu(),
        "native_bf16": native,
        "native_bf16_why": why,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "torch": torch.__version__,
        "loadavg_end": list(os.getloadavg()),
        "batch_size": trainers[configs[0]].cfg.train.batch_size,
        "images_per_sec_median": median,
        "images_per_sec_rounds": speeds,
        "best_manual": best,
        "auto": picks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "best_manual", "images_per_sec_median")}))


if __name__ == "__main__":
    main()
