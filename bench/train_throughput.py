"""Training throughput and FLOP utilisation: difflab's default UNet beside its peers.

Measures images/s of one full training step (forward, MSE loss against a target, backward,
AdamW step) at batch 128 on 28x28x1 inputs, in fp32 and in bf16 autocast, for
- difflab: ``get_preset("ddpm-small-28")`` (the default Fashion-MNIST network);
- denoising-diffusion-pytorch: ``Unet(dim=32, dim_mults=(1, 2, 4), channels=1)``;
- diffusers: ``UNet2DModel`` scaled down from its unconditional training example
  (widths 32/64/128, one ResNet per level down, attention at 7x7 and in the middle).

The peers run round-robin (every configuration once per round, several rounds, median), so
load from other processes on the machine hits all of them alike. The fp32 and bf16 matmul
peaks (2048x2048, best of several) are measured in the same rounds, and FLOP utilisation is
``3 * forward_flops * images_per_s / peak`` (training ~= 3x forward: the backward costs about
twice the forward). Forward FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on
one forward at batch 1 (it counts matmuls, convolutions and attention, not elementwise ops).

Run it with the bench environment's python (bench/setup_env.sh):

    .bench-env/bin/python bench/train_throughput.py [--rounds 5] [--steps 3] [--profile]

Writes bench/results/train_throughput.json (and train_throughput_profile.txt with --profile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results"
SIDE = 28


# ---------------------------------------------------------------------- the networks
def difflab_net() -> tuple[nn.Module, Callable]:
    from difflab.models.presets import get_preset

    net = get_preset("ddpm-small-28")
    return net, lambda m, x, t: m(x, t)


def ddpm_pytorch_net() -> tuple[nn.Module, Callable]:
    from denoising_diffusion_pytorch import Unet

    net = Unet(dim=32, dim_mults=(1, 2, 4), channels=1)
    return net, lambda m, x, t: m(x, t)  # its forward is model(x, time)


def diffusers_net() -> tuple[nn.Module, Callable]:
    from diffusers import UNet2DModel

    # The unconditional training example's UNet2DModel scaled down to difflab's widths:
    # 28 -> 14 -> 7, attention only at 7x7 (last down block, first up block, middle).
    net = UNet2DModel(
        sample_size=SIDE,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,  # as difflab (32 would leave one channel per group at width 32)
        attention_head_dim=32,  # 128 / 32 = 4 heads, as difflab
    )
    return net, lambda m, x, t: m(x, t).sample


NETS = {
    "difflab ddpm-small-28": difflab_net,
    "denoising-diffusion-pytorch Unet": ddpm_pytorch_net,
    "diffusers UNet2DModel": diffusers_net,
}


# ---------------------------------------------------------------------- measurements
def forward_flops(net: nn.Module, call: Callable) -> int:
    x, t = torch.randn(1, 1, SIDE, SIDE), torch.tensor([500.0])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(net, x, t)
    return counter.get_total_flops()


class Bench:
    """One (network, precision) configuration with its own optimizer and fixed batch."""

    def __init__(self, name: str, precision: str, batch: int, seed: int):
        torch.manual_seed(seed)
        self.name, self.precision = name, precision
        self.net, self.call = NETS[name]()
        self.net.train()
        self.params = sum(p.numel() for p in self.net.parameters())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(seed)
        self.x0 = torch.rand(batch, 1, SIDE, SIDE, generator=g) * 2 - 1
        self.t = torch.randint(0, 1000, (batch,), generator=g).float()
        self.eps = torch.randn(self.x0.shape, generator=g)
        alpha = torch.cos(self.t / 1000 * torch.pi / 2).view(-1, 1, 1, 1)
        sigma = torch.sin(self.t / 1000 * torch.pi / 2).view(-1, 1, 1, 1)
        self.xt = alpha * self.x0 + sigma * self.eps
        self.target = alpha * self.eps - sigma * self.x0  # v, difflab's default target
        self.times: list[float] = []  # wall-clock seconds per step, one per round
        self.cpu_times: list[float] = []  # CPU seconds this process used per step

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            pred = self.call(self.net, self.xt, self.t)
        loss = F.mse_loss(pred.float(), self.target)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def timed(self, steps: int) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        self.times.append((time.perf_counter() - t0) / steps)
        self.cpu_times.append((time.process_time() - c0) / steps)


class MatmulPeak:
    """FLOP/s of an n x n matmul in one dtype, per wall and per CPU second; best is the peak."""

    def __init__(self, dtype: torch.dtype, n: int = 2048, reps: int = 4):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(dtype)
        self.b = torch.randn(n, n, generator=g).to(dtype)
        self.flops, self.reps = 2 * n**3, reps
        self.rates: list[float] = []  # best of `reps` per round, wall clock
        self.cpu_rates: list[float] = []  # the same per CPU second of this process
        torch.mm(self.a, self.b)  # warm-up

    def timed(self) -> None:
        best, best_cpu = float("inf"), float("inf")
        for _ in range(self.reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(self.a, self.b)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        self.rates.append(self.flops / best)
        self.cpu_rates.append(self.flops / best_cpu)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def profile(bench: Bench, steps: int = 3, top: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench.step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return f"### {bench.name} [{bench.precision}], {steps} steps\n{table}\n"


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per config per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per config")
    ap.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"],
                    choices=["fp32", "bf16"])
    ap.add_argument("--profile", action="store_true",
                    help="also profile every config (torch.profiler, top ops by self CPU time)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own choice, one per core)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv])
    print(f"command: {command}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average before: {loadavg()}", flush=True)

    benches = [Bench(n, p, args.batch, seed=i)
               for i, n in enumerate(args.nets) for p in args.precisions]
    flops = {n: forward_flops(b.net, b.call) for n, b in ((b.name, b) for b in benches)}
    peaks = {"fp32": MatmulPeak(torch.float32), "bf16": MatmulPeak(torch.bfloat16)}
    for b in benches:
        for _ in range(args.warmup):
            b.step()

    loads = [loadavg()]
    for r in range(args.rounds):
        for p in peaks.values():
            p.timed()
        for b in benches:
            b.timed(args.steps)
        loads.append(loadavg())
        line = ", ".join(f"{b.name.split()[0]}/{b.precision} "
                         f"{args.batch / b.times[-1]:.0f}" for b in benches)
        print(f"round {r + 1}/{args.rounds} img/s: {line}; load {loads[-1]}", flush=True)

    peak = {k: max(p.rates) for k, p in peaks.items()}
    peak_cpu = {k: max(p.cpu_rates) for k, p in peaks.items()}
    med = statistics.median
    ref = {b.precision: b for b in benches if b.name.startswith("difflab")}
    rows = []
    for b in benches:
        f, per_round = flops[b.name], [args.batch / t for t in b.times]
        ips, ips_cpu = args.batch / med(b.times), args.batch / med(b.cpu_times)
        peer = ref.get(b.precision)
        rows.append({
            "network": b.name,
            "precision": b.precision,
            "params": b.params,
            "fwd_flops_per_image": f,
            "train_flops_per_image": 3 * f,
            "images_per_s": ips,
            "images_per_s_rounds": per_round,
            "pixels_per_s": ips * SIDE * SIDE,
            # ratio to difflab measured round by round, then the median
            "vs_difflab": (med([t0 / t for t, t0 in zip(b.times, peer.times, strict=True)])
                           if peer else None),
            "images_per_cpu_s": ips_cpu,
            # CPU time: with one thread per process, what the process got of a core, so
            # this is the figure that load from other processes changes least
            "flop_utilisation": 3 * f * ips_cpu / peak_cpu[b.precision],
            "flop_utilisation_wall": 3 * f * ips / peak[b.precision],
        })

    print()
    print(f"Matmul peak 2048x2048 (best of {args.rounds} rounds x 4), per wall second: "
          f"fp32 {peak['fp32'] / 1e9:.1f}, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s; per CPU "
          f"second: fp32 {peak_cpu['fp32'] / 1e9:.1f}, bf16 {peak_cpu['bf16'] / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} thread(s))")
    print()
    print("| network | precision | params (M) | fwd GFLOP/img | train GFLOP/img | images/s "
          "| vs difflab | images/CPU-s | FLOP util. (CPU) | FLOP util. (wall) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rel = f"{r['vs_difflab']:.2f}x" if r["vs_difflab"] is not None else "-"
        print(f"| {r['network']} | {r['precision']} | {r['params'] / 1e6:.2f} "
              f"| {r['fwd_flops_per_image'] / 1e9:.3f} | {r['train_flops_per_image'] / 1e9:.3f} "
              f"| {r['images_per_s']:.0f} | {rel} | {r['images_per_cpu_s']:.0f} "
              f"| {100 * r['flop_utilisation']:.1f} % | {100 * r['flop_utilisation_wall']:.1f} % |")
    print(f"\nload average per round (1/5/15 min): {loads}")
    print(f"command: {command}")

    prof_text = ""
    if args.profile:
        prof_text = "".join(profile(b) for b in benches)
        prof_path = args.out.with_name(args.out.stem + "_profile.txt")
        prof_path.write_text(f"command: {command}\n\n{prof_text}")
        print(f"\nprofiles written to {prof_path}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": command,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batch": args.batch,
        "image_shape": [1, SIDE, SIDE],
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "matmul_peak_flops": peak,
        "matmul_peak_flops_per_cpu_s": peak_cpu,
        "matmul_rates_per_round": {k: p.rates for k, p in peaks.items()},
        "matmul_cpu_rates_per_round": {k: p.cpu_rates for k, p in peaks.items()},
        "load_average_per_round": loads,
        "results": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
