"""Peak resident memory of training and of streaming 10,000 samples to an .npz.

Every measurement runs in a fresh subprocess (this file with ``--worker``), so one peak never
hides another. The peak is the child's ``ru_maxrss`` as reported by ``os.wait4`` (the kernel's
high-water mark of its resident set, the same number as VmHWM in /proc/PID/status); the
worker also reports its resident set right after ``import torch, difflab`` (the baseline every
PyTorch program pays, large for a CUDA build of torch) so the work's own share is visible.

Measurements:
- ``import``: ``import torch, difflab`` only;
- ``train-loop fp32`` / ``bf16``: the default preset (``ddpm-small-28``), AdamW, 20 steps at
  batch 128 on random 28x28 inputs, as in train_throughput.py;
- ``difflab train``: the real command, ``difflab train fashion_mnist --steps 20`` (the full
  60k-image Fashion-MNIST training split, EMA, bf16, checkpoints). Its checkpoint is the one
  the sampling measurements load;
- ``generate_to_npz N``: ``Generator.generate_to_npz`` (batches streamed into a memory-mapped
  array) for N = 1,000 and 10,000, DDIM with 2 steps, batch 500, and for 10,000 at batch
  100: the peak should not grow with N, only with the batch size;
- ``generate N, kept as float32``: for contrast, ``Generator.generate`` (all N uint8 images
  in memory) then converted to float32 as a naive script would hold them.

The sampler runs only 2 steps: memory, not quality, is measured; the number of steps does
not change the peak. Run it with the bench environment's python (bench/setup_env.sh):

    .bench-env/bin/python bench/sample_memory.py [--n 10000] [--ckpt DIR]

Writes bench/results/sample_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# ---------------------------------------------------------------------- workers
def worker(kind: str, args: argparse.Namespace) -> dict:
    import torch

    import difflab  # noqa: F401

    base = status_kib("VmRSS")
    t0 = time.perf_counter()
    info: dict = {}
    if kind in ("train-loop-fp32", "train-loop-bf16"):
        import torch.nn.functional as F

        from difflab.models.presets import get_preset

        torch.manual_seed(0)
        net = get_preset("ddpm-small-28").train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind.endswith("bf16"))
        for _ in range(args.train_steps):
            x = torch.randn(args.batch, 1, 28, 28)
            t = torch.randint(0, 1000, (args.batch,)).float()
            opt.zero_grad(set_to_none=True)
            with autocast:
                pred = net(x, t)
            F.mse_loss(pred.float(), torch.randn_like(x)).backward()
            opt.step()
    elif kind == "cli-train":
        from difflab.cli import main as cli_main

        rc = cli_main(["train", "fashion_mnist", "--steps", str(args.train_steps), "--out",
                       str(args.ckpt_run), "--no-report", "--device", "cpu",
                       "--set", f"train.batch_size={args.batch}"])
        if rc:
            raise SystemExit(f"difflab train failed with exit code {rc}")
    elif kind in ("stream", "in-memory"):
        import numpy as np

        from difflab.pipeline import Generator

        gen = Generator.from_checkpoint(args.ckpt, device="cpu")
        opts = dict(sampler="ddim", steps=args.sample_steps, batch_size=args.sample_batch)
        if kind == "stream":
            with tempfile.TemporaryDirectory() as tmp:
                path = gen.generate_to_npz(Path(tmp) / "samples.npz", args.n, **opts)
                info["npz_bytes"] = path.stat().st_size
                with np.load(path) as z:
                    info["npz_shape"] = list(z["images"].shape)
        else:
            images = gen.generate(args.n, **opts).float() / 255  # all N held as float32
            info["held_bytes"] = images.numel() * images.element_size()
    elif kind != "import":
        raise SystemExit(f"unknown worker {kind!r}")
    return {"rss_after_import_kib": base, "vmhwm_kib": status_kib("VmHWM"),
            "seconds": time.perf_counter() - t0, **info}


def run_worker(kind: str, argv: list[str]) -> dict:
    """Run one worker in a fresh process; its peak RSS comes from the kernel via wait4."""
    cmd = [sys.executable, __file__, "--worker", kind, *argv]
    with tempfile.TemporaryFile(mode="w+") as err:  # progress bars; shown only on failure
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"worker {kind} failed ({proc.returncode}):\n{out}{err.read()}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_kib"] = usage.ru_maxrss  # KiB on Linux
    return result


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="images to sample")
    ap.add_argument("--batch", type=int, default=128, help="training batch size")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--sample-steps", type=int, default=2)
    ap.add_argument("--sample-batch", type=int, default=500)
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="checkpoint to sample from (default: the one `difflab train` writes)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt-run", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "sample_memory.json")
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv])
    print(f"command: {command}\nload average before: {os.getloadavg()}", flush=True)
    common = ["--batch", str(args.batch), "--train-steps", str(args.train_steps),
              "--sample-steps", str(args.sample_steps), "--sample-batch", str(args.sample_batch)]
    tmp = tempfile.TemporaryDirectory(prefix="difflab_bench_")
    run_dir = Path(tmp.name) / "run"
    ckpt = args.ckpt or run_dir / "last"

    plan = [
        ("import torch, difflab", "import", []),
        (f"train-loop fp32, {args.train_steps} steps, batch {args.batch}", "train-loop-fp32", []),
        (f"train-loop bf16, {args.train_steps} steps, batch {args.batch}", "train-loop-bf16", []),
        (f"difflab train fashion_mnist --steps {args.train_steps} (bf16, EMA, 60k images)",
         "cli-train", ["--ckpt-run", str(run_dir)]),
    ]
    ns = sorted({min(1000, args.n), args.n})
    plan += [(f"generate_to_npz N={n:,} (ddim {args.sample_steps} steps, batch "
              f"{args.sample_batch})", "stream", ["--n", str(n), "--ckpt", str(ckpt)])
             for n in ns]
    small = max(1, args.sample_batch // 5)  # the peak follows the batch size, not N
    plan.append((f"generate_to_npz N={args.n:,} (ddim {args.sample_steps} steps, batch {small})",
                 "stream", ["--n", str(args.n), "--ckpt", str(ckpt), "--sample-batch", str(small)]))
    plan.append((f"generate N={args.n:,}, all kept as float32 (for contrast)", "in-memory",
                 ["--n", str(args.n), "--ckpt", str(ckpt)]))
    if args.ckpt:
        plan = [p for p in plan if p[1] != "cli-train"]

    rows = []
    for label, kind, extra in plan:
        r = run_worker(kind, common + extra)
        r.update(label=label, worker=kind, load_average=list(os.getloadavg()))
        rows.append(r)
        print(f"{label}: peak {r['peak_rss_kib'] / 1024:.0f} MiB, after import "
              f"{r['rss_after_import_kib'] / 1024:.0f} MiB, {r['seconds']:.1f} s, "
              f"load {r['load_average']}", flush=True)
    tmp.cleanup()

    f32_bytes = args.n * 28 * 28 * 4
    print(f"\nHolding all {args.n:,} 28x28x1 images as float32 takes "
          f"{f32_bytes / MIB:.1f} MiB ({args.n * 28 * 28 / MIB:.1f} MiB as uint8).\n")
    print("| measurement | peak RSS (MiB) | RSS after import (MiB) | peak - import (MiB) "
          "| wall time (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['peak_rss_kib'] / 1024:.0f} "
              f"| {r['rss_after_import_kib'] / 1024:.0f} "
              f"| {(r['peak_rss_kib'] - r['rss_after_import_kib']) / 1024:.0f} "
              f"| {r['seconds']:.1f} |")
    print(f"\ncommand: {command}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": command,
        "n": args.n,
        "float32_bytes_all_images": f32_bytes,
        "uint8_bytes_all_images": args.n * 28 * 28,
        "results": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
