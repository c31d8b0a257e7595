"""Where a training step of the default preset spends its time on a CPU, and what fusing buys.

Times `Trainer.train_step()` of configs/fashion_mnist.toml (the 0.46 M UNet at batch 32, its
two power EMAs, AdamW) in each precision asked, for three arms built the same way:

- `adamw loop`: AdamW's per-tensor implementation (torch's default on a CPU before difflab
  asked for the fused kernel);
- `adamw fused`: difflab's trainer as it is (`fused=True`);
- `fused + channels_last`: the same with the network in channels_last memory format.

The arms run round-robin (each `--steps` steps, `--rounds` times; the median is reported), so
load from other processes hits them alike. Before timing, every arm takes one step past the
warm-up from the loop arm's weights, batch and noise, and its largest parameter difference from
the loop arm's is reported (a step moves a parameter by up to the learning rate, 2e-3). A
profile of the default arm then splits its step by operator (PyTorch profiler, self CPU time).

    OMP_NUM_THREADS=1 python bench/train_step_profile.py --out bench/results/train_step_profile.json
    # a CPU without native bf16, emulated on one that has it:
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1 \\
        python bench/train_step_profile.py --precisions fp32 --out …_avx2.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from shapes_geneval import cpu_line
from torch.profiler import ProfilerActivity, profile

from difflab.config import load_config
from difflab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("adamw loop", "adamw fused", "fused + channels_last")
# Operator families of the profile, by name prefix (the rest is "other").
FAMILIES = {
    "convolution forward": ("aten::mkldnn_convolution", "aten::convolution_overrideable"),
    "convolution backward": ("aten::convolution_backward",),
    "copies and casts": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::empty"),
    "norms and activations": ("aten::native_group_norm", "aten::silu", "aten::native_layer_norm"),
    "attention and linear": ("aten::mm", "aten::bmm", "aten::addmm", "aten::_softmax"),
    "optimizer": ("Optimizer.step", "aten::_fused_adamw", "aten::addcdiv", "aten::addcmul",
                  "aten::sqrt", "aten::lerp"),
}


def make_trainer(arm: str, precision: str, threads: int) -> Trainer:
    cfg = load_config(ROOT / "configs" / "fashion_mnist.toml",
                      [f"train.precision={precision}", f"train.threads={threads}"])
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="difflab-step-"), device="cpu", quiet=True)
    if arm == "adamw loop":
        tc = cfg.train
        trainer.optimizer = torch.optim.AdamW(trainer.net.parameters(), lr=tc.lr,
                                              betas=tc.betas, weight_decay=tc.weight_decay,
                                              foreach=False, fused=False)
    if arm == "fused + channels_last":
        trainer.net.to(memory_format=torch.channels_last)
    return trainer


def agreement(trainers: dict[str, Trainer]) -> dict[str, float]:
    """Each arm's largest parameter difference from the loop arm after one step from the same
    weights and the same batch."""
    ref = trainers["adamw loop"]
    weights = {k: v.clone() for k, v in ref.net.state_dict().items()}
    batches, gen = ref.batches.state_dict(), ref.gen.get_state()
    out = {}
    for tr in trainers.values():
        tr.net.load_state_dict(weights)
        tr.batches.load_state_dict(batches)
        tr.gen.set_state(gen)
        tr.step = tr.cfg.train.warmup_steps  # the full learning rate
        tr.train_step(0.5)
    for arm, tr in trainers.items():
        out[arm] = max(float((a.detach() - b.detach()).abs().max()) for a, b in
                       zip(tr.net.parameters(), ref.net.parameters(), strict=True))
    return out


def families(trainer: Trainer, steps: int) -> dict[str, float]:
    """Milliseconds a step per operator family (self CPU time)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step(0.5)
    ms: collections.Counter = collections.Counter()
    for e in prof.key_averages():
        family = next((f for f, names in FAMILIES.items() if e.key.startswith(names)), "other")
        ms[family] += e.self_cpu_time_total / 1000 / steps
    return {k: round(v, 2) for k, v in ms.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                      "OMP_NUM_THREADS") if k in os.environ}
    result = {"cpu": cpu_line(), "env": env, "threads": args.threads, "rounds": args.rounds,
              "steps": args.steps, "precisions": {}}
    for precision in args.precisions:
        trainers = {arm: make_trainer(arm, precision, args.threads) for arm in ARMS}
        diffs = agreement(trainers)
        for tr in trainers.values():  # warm up: allocator, oneDNN primitive caches
            for _ in range(10):
                tr.train_step(0.5)
        ms: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for _ in range(args.rounds):
            for arm, tr in trainers.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    tr.train_step(0.5)
                ms[arm].append((time.perf_counter() - t0) / args.steps * 1000)
        base = statistics.median(ms["adamw loop"])
        rows = {arm: {"ms_per_step": round(statistics.median(v), 1),
                      "rounds_ms": [round(x, 1) for x in v],
                      "speed_vs_loop": round(base / statistics.median(v), 3),
                      "speed_vs_loop_per_round": [round(b / x, 3) for b, x in
                                                  zip(ms["adamw loop"], v, strict=True)],
                      "max_param_diff_vs_loop": diffs[arm]} for arm, v in ms.items()}
        result["precisions"][precision] = {
            "arms": rows, "profile_ms_per_step": families(trainers["adamw fused"], 20)}
        print(precision, json.dumps(rows, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
