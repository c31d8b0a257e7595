"""Latent versus pixel diffusion at equal model FLOPs and equal compute (Rombach et al. 2022's
argument, measured here on Fashion-MNIST).

    python bench/latent_vs_pixel.py --autoencoder runs/fashion_autoencoder/last \\
        [--minutes 10] [--samples 1000] [--out bench/results/latent_vs_pixel]

Two unconditional denoisers with about the same forward FLOPs per image
(torch.utils.flop_counter, batch 1):
- pixel: difflab's default ``ddpm-small-28`` UNet on 28x28x1 images;
- latent: the same UNet design on the frozen autoencoder's 7x7x4 latents, widened
  (base width 144, levels 7 -> 4, attention at both) to the pixel net's FLOPs.
Each trains (configs/fashion_mnist.toml otherwise, no flips for the latent run) for the same
budget of CPU seconds of its own process, one thread, in turn (process time, not wall time:
this 2-core machine is shared and its wall clock is not a fair budget); then 1000 samples each
(DPM-Solver++ 2M, 20 steps; the latent ones decoded) are scored with difflab's FID in the
Fashion-MNIST classifier's feature space (Inception weights cannot be had offline). Reported:
FLOPs, parameters, training images/s, steps, FID; the one-off cost of encoding the data.
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
from torch.utils.flop_counter import FlopCounterMode

from difflab.config import load_config
from difflab.metrics.evaluate import evaluate_images
from difflab.pipeline import Generator
from difflab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LATENT_NET = {
    "base_channels": 144, "channel_mults": [1, 2], "attention_resolutions": [7, 4],
}


def forward_gflops(net: torch.nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn(1, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.tensor([500.0]))
    return counter.get_total_flops() / 1e9


def run(name: str, sets: list[str], args, out: Path) -> dict:
    cfg = load_config(ROOT / "configs" / "fashion_mnist.toml", sets)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg, ROOT / "runs" / "latent_vs_pixel" / name, quiet=True)  # gitignored
    setup_cpu = time.process_time() - c0
    gflops = forward_gflops(trainer.net, trainer.model_shape)
    budget = args.minutes * 60
    c_train, w_train = time.process_time(), time.perf_counter()
    while time.process_time() - c_train < budget:
        trainer.train_step((time.process_time() - c_train) / budget)
    cpu = time.process_time() - c_train
    wall = time.perf_counter() - w_train
    trainer.save("last")
    gen = Generator.from_trainer(trainer)
    c1 = time.process_time()
    images = gen.generate(args.samples, sampler="dpmpp_2m", steps=20, seed=0, batch_size=250)
    sample_cpu = time.process_time() - c1
    report = evaluate_images(images, "fashion_mnist")
    row = {
        "system": name, "model_shape": list(trainer.model_shape),
        "forward_gflops": round(gflops, 3),
        "parameters_m": round(sum(p.numel() for p in trainer.net.parameters()) / 1e6, 2),
        "steps": trainer.step, "images_per_cpu_s": trainer.step * cfg.train.batch_size / cpu,
        "train_cpu_s": round(cpu), "train_wall_s": round(wall),
        "setup_cpu_s": round(setup_cpu, 1), "sample_cpu_s_per_1000": round(
            sample_cpu * 1000 / args.samples, 1),
        "fid": report["fid"], "precision": report["precision"], "recall": report["recall"],
        "feature_space": report["feature_space"], "total_wall_s": round(time.perf_counter() - t0),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autoencoder", required=True, help="an autoencoder checkpoint")
    p.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of training each")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latent_vs_pixel"))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"command: {command}\nload average: {os.getloadavg()}")
    latent_sets = [
        f"latent.autoencoder={args.autoencoder}", "data.hflip=false", "sample.clip=none",
        *[f"model.overrides.{k}={json.dumps(v)}" for k, v in LATENT_NET.items()],
    ]
    rows = [run("pixel", [], args, out), run("latent", latent_sets, args, out)]
    (out / "results.json").write_text(json.dumps(
        {"command": command, "minutes": args.minutes, "samples": args.samples, "rows": rows},
        indent=2))
    print(f"\n{args.minutes:g} CPU-minutes each, one thread; FID of {args.samples} samples in "
          f"{rows[0]['feature_space']}\n")
    print("| system | input | GFLOP/img (fwd) | params | train img/CPU-s | steps | "
          "sampling CPU-s / 1000 | FID |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {'x'.join(map(str, r['model_shape']))} | "
              f"{r['forward_gflops']:.2f} | {r['parameters_m']:.2f} M | "
              f"{r['images_per_cpu_s']:.0f} | {r['steps']} | {r['sample_cpu_s_per_1000']:.0f} | "
              f"{r['fid']:.2f} |")


if __name__ == "__main__":
    main()
