"""CPU throughput of difflab's default network: channels_last and torch.compile, fp32 and bf16.

Does either layout or compiler make `difflab train fashion_mnist` (and sampling with its
network) faster on a CPU, and by enough to pay for itself within a 10-minute run? Four
variants, each in fp32 and in bf16 autocast (`torch.autocast("cpu", dtype=torch.bfloat16)`):

- eager NCHW: what difflab does today (the baseline of each precision);
- eager channels_last: the network's weights (and the EMA copy) converted with
  `.to(memory_format=torch.channels_last)`, so every convolution after the first runs on
  NHWC activations. A 1-channel (B, 1, 28, 28) input is already channels_last-contiguous
  (the two layouts differ only in the stride of a size-1 axis), so the input needs no copy;
  the inference input is converted anyway, as a caller would;
- torch.compile NCHW: `train.compile = true`, which makes the Trainer wrap its network in
  `torch.compile` (default mode, inductor);
- torch.compile + channels_last.

What is timed is the real thing. Training: `Trainer.train_step()` of a Trainer built from
src/difflab/configs/fashion_mnist.toml (what `difflab train fashion_mnist` builds: preset
ddpm-small-28, cosine schedule, v target, Min-SNR-5 loss, AdamW, EMA, batch 128), on 512
synthetic uint8 28x28 images (the pixel values do not change the cost, and this needs no
download). Sampling: one forward of the EMA network at batch 250 under `torch.no_grad`, which
is what each step of a sampler does. Every network starts from the shipped Fashion-MNIST
weights (src/difflab/weights/fashion-mnist), so outputs and gradients are not trivially zero
(the UNet's output layer is zero-initialised).

Correctness: before any optimiser step, every variant computes the loss and the gradients on
the same batch with the same t and noise, and its network's output on the same batch-250
input; each must agree with eager NCHW fp32 within a relative error (||a - b|| / ||b||) of
1e-3 in fp32, and of 2e-2 (loss), 5e-2 (outputs) and 1e-1 (gradients) in bf16 (unit roundoff
2^-9, compounded over ~20 layers and a backward). A variant that is fast because it computes
something else fails this and is marked so, with the number of parameter tensors whose
gradient is exactly zero where the reference's is not. (With torch 2.13.0+cpu it caught
compile + bf16: inductor's backward gives 54 of the 88 parameter tensors a zero gradient while
the forward agrees; see results/cpu_layouts.json.)

Compile cost: the first call of a compiled variant includes dynamo's trace and inductor's
C++ build (gcc); "compile s" is that first call's time minus the steady-state step time,
measured with a cold inductor cache (a fresh TORCHINDUCTOR_CACHE_DIR, as a user's first
run). dynamo's automatic dynamic shapes are off, so the training graph (batch 128) and the
sampling graph (batch 250) are each compiled static, as a run that only ever sees one batch
size gets them; the recompile limit is raised (and hitting it is an error, never a silent
fall-back to eager). "10-min run" is the images a 10-minute training budget sees after paying
the first-call cost, relative to eager NCHW of the same precision. Kernels inductor built for
one variant are reused by the next in the same process, so the first compiled variant of each
precision pays the cold cost and the later ones less: read the largest "compile s" of a
precision as what a fresh `difflab train` pays (cold cache; a later run of the same
configuration reuses the on-disk cache and pays less).

Timing is round-robin (every variant once per round, in a rotated order, several rounds,
median), so load from other processes hits all variants alike; ratios are taken round by
round, then the median. Images per CPU second of this process are given beside: with one
thread it is what the process got of a core, the figure that other processes' load changes
least (bench/README.md). One thread per process (`--threads 1`, how the benches train on this
shared 2-core machine: see bench/README.md).

    nice -n 0 .venv/bin/python bench/cpu_layouts.py [--rounds 5] [--steps 2] [--threads 1]

Writes bench/results/cpu_layouts.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

# A cold inductor cache, so the compile time is a first run's; set before torch is imported.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="difflab_inductor_"))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from difflab import hardware  # noqa: E402
from difflab.config import load_config  # noqa: E402
from difflab.data import ImageData  # noqa: E402
from difflab.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CONFIG = ROOT / "src/difflab/configs/fashion_mnist.toml"
WEIGHTS = ROOT / "src/difflab/weights/fashion-mnist/model.safetensors"
SIDE = 28
BUDGET_S = 600.0  # the default run's 10 minutes (train.minutes = 10)

# (name, compiled, channels_last)
LAYOUTS = [
    ("eager NCHW", False, False),
    ("eager channels_last", False, True),
    ("compile NCHW", True, False),
    ("compile channels_last", True, True),
]
# relative-error bounds against eager NCHW fp32: (loss, network output, gradients)
TOLERANCE = {"fp32": (1e-3, 1e-3, 1e-3), "bf16": (2e-2, 5e-2, 1e-1)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300]


class Variant:
    """One (layout, compiler, precision): a Trainer as `difflab train` builds it, and a copy of
    its EMA network for sampling, both starting from the shipped weights."""

    def __init__(self, name: str, compiled: bool, channels_last: bool, precision: str,
                 data: ImageData, weights: dict[str, torch.Tensor], args: argparse.Namespace):
        self.name, self.compiled, self.cl, self.precision = name, compiled, channels_last, precision
        self.label = f"{name} [{precision}]"
        overrides = [f"train.precision={precision}", f"train.batch_size={args.batch}",
                     f"train.compile={'true' if compiled else 'false'}"]
        self.overrides = overrides
        cfg = load_config(CONFIG, overrides)
        self.tr = Trainer(cfg, tempfile.mkdtemp(prefix="difflab_layouts_"), device="cpu",
                          data=data, quiet=True)
        for module in (self.tr.net, self.tr.ema.model):
            module.load_state_dict(weights)
            if channels_last:  # in place: the optimizer keeps the same Parameter objects
                module.to(memory_format=torch.channels_last)
        self.infer_net = copy.deepcopy(self.tr.ema.model).eval()
        self.infer_model = torch.compile(self.infer_net) if compiled else self.infer_net
        self.infer_batch = args.infer_batch
        self.train_times: list[float] = []
        self.train_cpu: list[float] = []
        self.infer_times: list[float] = []
        self.infer_cpu: list[float] = []
        self.error: str | None = None
        self.first: dict[str, float] = {}  # first and second call, seconds
        self.check: dict[str, float] = {}
        self.activations_channels_last: bool | None = None

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ first calls and checks
    def loss_and_grads(self, x0: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The objective's loss on `x0` with a fixed t and noise, and the flattened gradients
        (parameter order, logical element order whatever the memory format)."""
        tr = self.tr
        tr.optimizer.zero_grad(set_to_none=True)
        tr.gen.manual_seed(1234)
        loss = tr.batch_loss(x0, None)
        loss.backward()
        grads = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in tr.net.parameters()
        ])
        tr.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    def infer(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cl:
            x = x.to(memory_format=torch.channels_last)
        with torch.no_grad(), self.autocast():
            return self.infer_model(x, t).float()

    def first_calls(self, x0: torch.Tensor, xs: torch.Tensor, ts: torch.Tensor) -> dict:
        """Loss, gradients and sampling output on fixed inputs, each first call timed (for a
        compiled variant: the compile), then one more of each (warm-up, optimizer state)."""
        t0 = time.perf_counter()
        loss, grads = self.loss_and_grads(x0)
        self.first["train_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.tr.train_step()
        self.first["train_second_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self.infer(xs, ts)
        self.first["infer_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.infer(xs, ts)
        self.first["infer_second_s"] = time.perf_counter() - t0
        if not self.compiled:
            self.activations_channels_last = self._activation_layout(xs[:2], ts[:2])
        return {"loss": loss, "grads": grads, "out": out}

    def _activation_layout(self, x: torch.Tensor, t: torch.Tensor) -> bool:
        """Whether the first down-stage convolution's output is NHWC in memory (eager only)."""
        seen: list[bool] = []
        convs = [m for m in self.infer_net.modules() if isinstance(m, torch.nn.Conv2d)]
        hook = convs[1].register_forward_hook(
            lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)
                                        and not o.is_contiguous()))
        try:
            self.infer(x, t)
        finally:
            hook.remove()
        return seen[0]

    # ------------------------------------------------------------------ timed rounds
    def timed(self, steps: int, xs: torch.Tensor, ts: torch.Tensor) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.tr.train_step()
        self.train_times.append((time.perf_counter() - t0) / steps)
        self.train_cpu.append((time.process_time() - c0) / steps)
        t0, c0 = time.perf_counter(), time.process_time()
        self.infer(xs, ts)
        self.infer_times.append(time.perf_counter() - t0)
        self.infer_cpu.append(time.process_time() - c0)


def zero_note(check: dict) -> str:
    n = check.get("zero_grad_params", 0)
    return f", {n} params with all-zero grads" if n else ""


def cpu_record() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        gcc = None
    return {
        "model_name": fields.get("Model name", platform.processor()).strip(),
        "flags_of_interest": {f: f in flags for f in wanted},
        "describe_cpu": hardware.describe_cpu(),
        "native_bf16": hardware.cpu_native_bf16()[1],
        "cpus": os.cpu_count(),
        "gcc": gcc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128, help="training batch (the config's)")
    ap.add_argument("--infer-batch", type=int, default=250, help="sampling batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed train steps per variant per round")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"],
                    choices=["fp32", "bf16"])
    ap.add_argument("--layouts", nargs="*", default=[n for n, _, _ in LAYOUTS],
                    choices=[n for n, _, _ in LAYOUTS])
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_layouts.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dyn = torch._dynamo.config
    dyn.automatic_dynamic_shapes = False  # batch 128 and batch 250: two static graphs
    dyn.recompile_limit = 64  # 4 variants x (train, sample) graphs of one forward
    dyn.fail_on_recompile_limit_hit = True  # never fall back to eager silently

    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv])
    wall0 = time.perf_counter()
    cpu = cpu_record()
    print(f"command: {command}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), nice {os.nice(0)}, "
          f"{cpu['model_name']} ({cpu['describe_cpu']}), load average before: {loadavg()}",
          flush=True)
    print(f"inductor cache: {os.environ['TORCHINDUCTOR_CACHE_DIR']}", flush=True)

    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (512, 1, SIDE, SIDE), generator=g,
                                   dtype=torch.uint8), None, None, "synthetic")
    weights = {k: v.float() for k, v in load_file(WEIGHTS).items()}
    xs = torch.randn(args.infer_batch, 1, SIDE, SIDE, generator=g)
    ts = torch.randint(0, 1000, (args.infer_batch,), generator=g).float()

    variants, loads = [], [loadavg()]
    refs: dict[str, dict] = {}
    for precision in args.precisions:
        for name, compiled, cl in LAYOUTS:
            if name not in args.layouts:
                continue
            v = Variant(name, compiled, cl, precision, data, weights, args)
            x0 = v.tr.batches.batch_at(0, 0).images  # the same batch for every variant
            t0 = time.perf_counter()
            try:
                got = v.first_calls(x0, xs, ts)
            except Exception as e:  # a failed compile is a result
                v.error = first_line(e)
                print(f"{v.label}: FAILED after {time.perf_counter() - t0:.0f} s: {v.error}",
                      flush=True)
                variants.append(v)
                continue
            refs[v.label] = got
            sizes = [p.numel() for p in v.tr.net.parameters()]
            ref = refs.get("eager NCHW [fp32]", got)
            same = refs.get(f"eager NCHW [{precision}]", got)
            v.check = {
                "loss": got["loss"],
                "loss_rel_err": abs(got["loss"] - ref["loss"]) / abs(ref["loss"]),
                "grads_rel_err": rel_err(got["grads"], ref["grads"]),
                # parameters whose gradient is exactly zero here but not in the reference
                "zero_grad_params": sum(
                    int(g.abs().max() == 0 and r.abs().max() > 0) for g, r in zip(
                        got["grads"].split(sizes), ref["grads"].split(sizes), strict=True)),
                "output_rel_err": rel_err(got["out"], ref["out"]),
                "loss_rel_err_vs_eager_same_precision":
                    abs(got["loss"] - same["loss"]) / abs(same["loss"]),
                "grads_rel_err_vs_eager_same_precision": rel_err(got["grads"], same["grads"]),
                "output_rel_err_vs_eager_same_precision": rel_err(got["out"], same["out"]),
            }
            tol = TOLERANCE[precision]
            v.check["passed"] = (v.check["loss_rel_err"] <= tol[0]
                                 and v.check["output_rel_err"] <= tol[1]
                                 and v.check["grads_rel_err"] <= tol[2])
            variants.append(v)
            print(f"{v.label}: first calls train {v.first['train_first_s']:.1f} s, sample "
                  f"{v.first['infer_first_s']:.1f} s; rel. err. vs eager NCHW fp32: loss "
                  f"{v.check['loss_rel_err']:.1e}, output {v.check['output_rel_err']:.1e}, "
                  f"grads {v.check['grads_rel_err']:.1e} "
                  f"({'ok' if v.check['passed'] else 'FAILED'}); load {loadavg()}", flush=True)
    setup_s = time.perf_counter() - wall0
    loads.append(loadavg())

    running = [v for v in variants if v.error is None]
    for r in range(args.rounds):
        k = r % len(running)
        for v in running[k:] + running[:k]:  # rotated, so no variant always goes first
            v.timed(args.steps, xs, ts)
        loads.append(loadavg())
        line = ", ".join(f"{v.label} {args.batch / v.train_times[-1]:.0f}/"
                         f"{args.infer_batch / v.infer_times[-1]:.0f}" for v in running)
        print(f"round {r + 1}/{args.rounds} train/sample img/s: {line}; load {loads[-1]}",
              flush=True)

    med = statistics.median
    base = {v.precision: v for v in running if v.name == "eager NCHW"}
    rows = []
    for v in variants:
        row = {"variant": v.name, "precision": v.precision, "compiled": v.compiled,
               "channels_last": v.cl, "config_overrides": v.overrides, "error": v.error}
        if v.error is None:
            b = base.get(v.precision)
            train_ips = [args.batch / t for t in v.train_times]
            infer_ips = [args.infer_batch / t for t in v.infer_times]
            step_s, infer_s = med(v.train_times), med(v.infer_times)
            train_over = max(0.0, v.first["train_first_s"] - step_s)
            infer_over = max(0.0, v.first["infer_first_s"] - infer_s)
            row.update({
                "train_images_per_s": args.batch / step_s,
                "train_images_per_s_rounds": train_ips,
                "train_images_per_cpu_s": args.batch / med(v.train_cpu),
                "infer_images_per_cpu_s": args.infer_batch / med(v.infer_cpu),
                "infer_images_per_s": args.infer_batch / infer_s,
                "infer_images_per_s_rounds": infer_ips,
                "first_calls_s": v.first,
                "train_first_call_overhead_s": train_over,
                "infer_first_call_overhead_s": infer_over,
                "images_in_10_min": max(0.0, BUDGET_S - train_over) * args.batch / step_s,
                "activations_channels_last": v.activations_channels_last,
                "check": v.check,
            })
            if b is not None:
                row["train_vs_eager_nchw"] = med(
                    [t0 / t for t, t0 in zip(v.train_times, b.train_times, strict=True)])
                row["infer_vs_eager_nchw"] = med(
                    [t0 / t for t, t0 in zip(v.infer_times, b.infer_times, strict=True)])
                # the speed ratio times the share of the budget left after the first call
                base_over = max(0.0, b.first["train_first_s"] - med(b.train_times))
                row["images_in_10_min_vs_eager_nchw"] = row["train_vs_eager_nchw"] * (
                    max(0.0, BUDGET_S - train_over) / (BUDGET_S - base_over))
                # per CPU second of this process: what load from other processes changes least
                row["train_cpu_vs_eager_nchw"] = med(b.train_cpu) / med(v.train_cpu)
                row["infer_cpu_vs_eager_nchw"] = med(b.infer_cpu) / med(v.infer_cpu)
                saved = med(b.infer_times) - infer_s  # seconds saved per batch-250 forward
                row["infer_break_even_forwards"] = (infer_over / saved if saved > 0 else None)
        rows.append(row)

    nan = float("nan")
    print()
    print(f"{cpu['model_name']}: {cpu['describe_cpu']}; {cpu['native_bf16']}; "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    print()
    print("| variant | precision | train img/s (min-max) | vs eager NCHW (wall / CPU-s) "
          "| 10-min run vs eager | sample img/s (min-max) | vs eager NCHW (wall / CPU-s) "
          "| compile s (train / sample) | rel. err. vs eager fp32 (loss / out / grads) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["error"] is not None:
            print(f"| {r['variant']} | {r['precision']} | failed: {r['error']} "
                  "| | | | | | |")
            continue
        c = r["check"]
        tr_, inf = r["train_images_per_s_rounds"], r["infer_images_per_s_rounds"]
        print(f"| {r['variant']} | {r['precision']} "
              f"| {r['train_images_per_s']:.0f} ({min(tr_):.0f}-{max(tr_):.0f}) "
              f"| {r.get('train_vs_eager_nchw', nan):.2f}x / "
              f"{r.get('train_cpu_vs_eager_nchw', nan):.2f}x "
              f"| {r.get('images_in_10_min_vs_eager_nchw', nan):.2f}x "
              f"| {r['infer_images_per_s']:.0f} ({min(inf):.0f}-{max(inf):.0f}) "
              f"| {r.get('infer_vs_eager_nchw', nan):.2f}x / "
              f"{r.get('infer_cpu_vs_eager_nchw', nan):.2f}x "
              f"| {r['train_first_call_overhead_s']:.0f} / {r['infer_first_call_overhead_s']:.0f} "
              f"| {c['loss_rel_err']:.0e} / {c['output_rel_err']:.0e} / {c['grads_rel_err']:.0e}"
              f" {'ok' if c['passed'] else 'FAILED'}"
              f"{zero_note(c)} |")
    total_s = time.perf_counter() - wall0
    print(f"\nload average (1/5/15 min) before, after the first calls, after each round: {loads}")
    print(f"wall: {total_s / 60:.1f} min ({setup_s / 60:.1f} min of first calls / compiles)")
    print(f"command: {command}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": command,
        "torch": torch.__version__,
        "threads": args.threads,
        "nice": os.nice(0),
        "cpu": cpu,
        "config": str(CONFIG.relative_to(ROOT)),
        "weights": str(WEIGHTS.relative_to(ROOT)),
        "data": "512 synthetic uint8 images 1x28x28 (seed 0)",
        "batch": args.batch,
        "infer_batch": args.infer_batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "dynamo": {"automatic_dynamic_shapes": False, "recompile_limit": 64,
                   "inductor_cache": "cold (fresh TORCHINDUCTOR_CACHE_DIR)"},
        "tolerance_rel_err_vs_eager_nchw_fp32": {
            p: dict(zip(("loss", "output", "grads"), t, strict=True))
            for p, t in TOLERANCE.items()},
        "budget_s": BUDGET_S,
        "load_average_per_round": loads,
        "wall_s": total_s,
        "first_calls_wall_s": setup_s,
        "results": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
