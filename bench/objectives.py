"""Objectives at one CPU budget: the default preset (DDPM, v-prediction, Min-SNR-5), EDM
and flow matching (on the large preset's network), same data, optimiser, budget and evaluator.

- ``default``: ``configs/fashion_mnist.toml`` (cosine DDPM, v-prediction, Min-SNR-5 weights;
  the tiny 0.46 M UNet at batch 32 since "Network and batch for a CPU budget");
- ``large``: ``configs/fashion_mnist_large.toml``, the same objective on the 1.39 M UNet at batch
  128: the default before that, and the network EDM and flow share;
- ``edm``: ``configs/fashion_mnist_edm.toml`` (Karras et al. 2022: preconditioning, log-normal
  noise levels, EDM loss weighting; difflab.diffusion.edm);
- ``flow``: ``configs/fashion_mnist_flow.toml`` (flow matching / rectified flow with
  logit-normal times, Lipman et al. 2023, Liu et al. 2023, Esser et al. 2024;
  difflab.diffusion.flow).

``large``, ``edm`` and ``flow`` train the same ~1.39 M-parameter UNet (only its time input's
scale differs: ``model.overrides.time_scale``) with AdamW 2e-3, batch 128, the learning rate
decayed linearly to zero over the budget, EMA 0.999. Each trains in its own one-thread subprocess,
one at a time, until its training loop has used ``--minutes`` of CPU time
(``time.process_time()``: what the process got of a core, insensitive to other jobs on a
shared machine; the Clock of bench/quality_at_budget.py). Setup (data, network) is outside the
budget. Precision is the preset's "auto", settled before the clock starts: on a CPU without
native bf16, or with ``DIFFLAB_NATIVE_BF16=0``, that is fp32 (the JSON records which).

Then each checkpoint's EMA weights draw ``--samples`` images with its preset's [sample]
settings (as the TOML file has them when this runs) and are scored by difflab's evaluator
(``difflab.evaluation.evaluate_generator``, what ``difflab eval`` runs): FID, KID, precision
and recall against the 10,000 test images in the feature space of difflab's Fashion-MNIST
classifier. With ``--nfe``, each objective's
checkpoint is also sampled with several samplers at about 5, 10, 20 (...) network evaluations,
``--nfe-samples`` images each: FID against cost, to choose each preset's [sample] defaults.

    nohup nice -n 10 env OMP_NUM_THREADS=1 DIFFLAB_NATIVE_BF16=0 \\
        .venv/bin/python bench/objectives.py --minutes 5 --nfe 5 10 20 > objectives.log &
    .venv/bin/python bench/objectives.py --minutes 20 --seeds 0 1      # two seeds
    .venv/bin/python bench/objectives.py --minutes 20 --peer     # + denoising-diffusion-pytorch

``--peer`` also trains denoising-diffusion-pytorch at the same budget, through
bench/quality_at_budget.py's worker (its own Trainer and DDIM sampler; it needs the package,
e.g. .bench-env: ``--peer-python``), and scores its samples with the same evaluator.

Writes ``bench/results/objectives_<minutes>min.json`` (``--out``); the checkpoints stay in
``--work`` (one folder per objective and seed), so a later ``--eval-only`` or ``--nfe`` run
samples them again without training.
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

import numpy as np
import torch
from quality_at_budget import Clock, loadavg, saturated_fraction

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PRESETS = {
    "default": "fashion_mnist",
    "large": "fashion_mnist_large",
    "edm": "fashion_mnist_edm",
    "flow": "fashion_mnist_flow",
}
DATASET = "fashion_mnist"
# Samplers of the --nfe sweep per objective: the few-step solvers each objective's process
# suits (EDM's Heun is its paper's; flow's integrators in t; DPM-Solver++ and DEIS on all).
DDPM_SOLVERS = ["dpmpp_2m", "dpmpp_3m", "deis", "heun"]  # both DDPM presets
NFE_SAMPLERS = {
    "default": DDPM_SOLVERS,
    "large": DDPM_SOLVERS,
    "edm": ["heun", "dpmpp_2m", "dpmpp_3m", "deis"],
    "flow": ["flow_euler", "flow_heun", "dpmpp_2m", "dpmpp_3m", "deis"],
}


def steps_for(sampler: str, nfe: int) -> int:
    """Grid points that cost at most `nfe` network evaluations with `sampler`."""
    from difflab.samplers import EVALS_PER_STEP

    per = EVALS_PER_STEP.get(sampler, 1)  # the last point costs one evaluation
    return max(2, (nfe - 1) // per + 1)


# ---------------------------------------------------------------------------- training
def ema_folder(decay: float | None) -> str:
    """The checkpoint that holds the weights averaged at `decay` (None: the run's own EMA)."""
    return "last" if decay is None else f"last_ema{decay:g}"


def train_worker(objective: str, minutes: float, seed: int, folder: Path,
                 extra: list[str], ema_decays: list[float], steps: int | None = None) -> None:
    """Train one objective for `minutes` of CPU time in this process, or for exactly
    `steps` steps when given (equal images for every variant, whatever the machine's speed
    does meanwhile; the learning rate then decays over the steps) (`extra`: --set
    overrides of its preset); save folder/last and folder/train.json. Each of `ema_decays`
    gets an average of its own beside the run's, kept over the same steps (warm-up included)
    and saved as folder/last_ema<decay> (decay 0: the raw weights): a comparison of decays
    that shares one training run, so training noise cancels."""
    from difflab.config import load_config
    from difflab.training.ema import EMA
    from difflab.training.trainer import Trainer

    torch.set_num_threads(1)
    sets = [f"train.seed={seed}", "train.threads=1", f"train.minutes={minutes}", *extra]
    cfg = load_config(ROOT / "configs" / f"{PRESETS[objective]}.toml", sets)
    trainer = Trainer(cfg, folder, quiet=True)
    settings = trainer.tuner.settle()  # precision "auto" for this machine, outside the budget
    extra_emas = {d: EMA(trainer.net, d, cfg.train.ema_warmup) for d in ema_decays}
    clock = Clock(minutes * 60)
    losses = []
    def spent() -> float:  # the fraction of the budget used so far
        return trainer.step / steps if steps else clock.cpu / clock.budget_s

    while trainer.step < steps if steps else not clock.spent():
        losses.append(trainer.train_step(progress=spent()))
        # train.guide_at: keep the EMA weights as autoguidance's guide, as `difflab train` does
        trainer.keep_guide(spent())
        for ema in extra_emas.values():
            ema.update(trainer.net)
    info = {
        "objective": objective, "preset": PRESETS[objective], "seed": seed,
        "steps": trainer.step, "images_seen": trainer.step * cfg.train.batch_size,
        "train_cpu_s": clock.cpu, "train_wall_s": clock.wall,
        "final_loss": float(np.mean(losses[-50:])), "train_precision": settings.precision,
        "train_precision_why": settings.why,
        "params": sum(p.numel() for p in trainer.net.parameters()), "overrides": extra,
    }
    trainer.save("last")
    for decay, ema in extra_emas.items():
        trainer.ema = ema
        trainer.save(ema_folder(decay))
    (folder / "train.json").write_text(json.dumps(info, indent=2) + "\n")


def peer_worker(python: str, minutes: float, samples: int, folder: Path) -> None:
    """denoising-diffusion-pytorch through bench/quality_at_budget.py (its Trainer, its DDIM
    sampler, 50 steps): folder/ddpm-pytorch.npz and .json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    subprocess.run([python, str(ROOT / "bench" / "quality_at_budget.py"), "--worker",
                    "ddpm-pytorch", "--minutes", str(minutes), "--samples", str(samples),
                    "--out", str(folder)], env=env, check=True)


# ---------------------------------------------------------------------------- scoring
BATCH = 250  # samples drawn at a time


def evaluate(folder: Path, samples: int, seed: int, checkpoint: str = "last",
             **options) -> dict:
    """The evaluator on a checkpoint's EMA weights: its [sample] settings unless `options`
    name a sampler, steps or spacing."""
    from difflab.evaluation import evaluate_generator
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint(folder / checkpoint, device="cpu")
    # network calls counted as they happen, the guide's included: autoguidance calls it only
    # at the steps inside its interval, which a formula from the steps would not know
    calls = [0]
    hooks = [m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for m in (gen.net, gen.guide) if m is not None]
    cpu0 = time.process_time()
    report = evaluate_generator(gen, DATASET, samples, seed=seed, batch_size=BATCH, **options)
    for hook in hooks:
        hook.remove()
    sampling = report["sampling"]
    sampling["nfe"] = calls[0] // -(-samples // BATCH)  # per sample: every batch calls alike
    sampling["spacing"] = options.get("spacing", "default")
    sampling["cpu_s"] = round(time.process_time() - cpu0, 1)
    return {k: report[k] for k in ("fid", "kid", "kid_stderr", "precision", "recall",
                                   "feature_space", "num_images") if k in report} | {
        "sampling": sampling}


def row_key(row: dict, default_decay: float) -> tuple:
    """What makes a result row one of its own: run, weight average and autoguidance."""
    return (row["objective"], row["seed"], row.get("ema_decay", default_decay),
            row.get("sampling", {}).get("autoguidance"))


def score_peer(folder: Path, seed: int) -> dict:
    from difflab.metrics import evaluate_images

    images = np.load(folder / "ddpm-pytorch.npz")["images"]
    info = json.loads((folder / "ddpm-pytorch.json").read_text())
    report = evaluate_images(images, DATASET, seed=seed)
    return {"objective": "ddpm-pytorch", "seed": seed, **info, "fid": report["fid"],
            "kid": report["kid"], "kid_stderr": report["kid_stderr"],
            "precision": report["precision"], "recall": report["recall"],
            "saturated": saturated_fraction(images), "num_images": len(images)}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = lines.get("Flags", "").split()
    marks = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{lines.get('Model name', '?').strip()} ({', '.join(marks) or 'no avx2'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="CPU minutes of training each")
    ap.add_argument("--objectives", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--steps", type=int, help="train exactly this many steps instead of "
                    "--minutes of CPU time (a budget in images, for variants of one network "
                    "on a machine whose speed drifts)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--samples", type=int, default=2000, help="samples for each FID")
    ap.add_argument("--nfe", type=int, nargs="*", default=[],
                    help="also sweep samplers at about these network evaluations")
    ap.add_argument("--nfe-samples", type=int, default=1000)
    ap.add_argument("--nfe-objectives", nargs="*", choices=list(PRESETS),
                    help="objectives to sweep (default: all of --objectives)")
    ap.add_argument("--nfe-samplers", nargs="*",
                    help="samplers to sweep (default: NFE_SAMPLERS of each objective; "
                    "'preset': each preset's own [sample] sampler)")
    ap.add_argument("--nfe-autoguidance", type=float, metavar="W",
                    help="the sweep's autoguidance weight (1: the model alone, which the "
                    "solvers' convergence is read on; default: the checkpoint's own)")
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: score the checkpoints already in --work")
    ap.add_argument("--no-eval", action="store_true",
                    help="skip the default-sampler FID (e.g. only --nfe)")
    ap.add_argument("--peer", action="store_true", help="add denoising-diffusion-pytorch")
    ap.add_argument("--peer-python", default=".bench-env/bin/python")
    ap.add_argument("--peer-samples", type=int, default=1000)
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "difflab-objectives")
    ap.add_argument("--out", type=Path, help="JSON file (default: bench/results/"
                    "objectives_<minutes>min.json)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of every trained preset (as `difflab train "
                    "--set`); use another --work and --out")
    ap.add_argument("--reference", choices=["test", "train"], default="test",
                    help="the real images FID is taken against: 'test' to report, 'train' "
                    "(10,000 of them) to choose settings without looking at the reported set")
    ap.add_argument("--ema-decays", type=float, nargs="*", default=[], metavar="DECAY",
                    help="also keep and score these EMA decays of each run (0: raw weights)")
    ap.add_argument("--autoguidance", type=float, nargs="*", default=[], metavar="W",
                    help="score each autoguidance weight (1: the model alone) instead of the "
                    "checkpoint's own setting; the run needs train.guide_at for W != 1")
    ap.add_argument("--worker", choices=list(PRESETS), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    budget = f"{args.steps}steps" if args.steps else f"{args.minutes:g}min"
    work = args.work / budget
    if args.worker:
        folder = work / f"{args.worker}_s{args.seed}"
        train_worker(args.worker, args.minutes, args.seed, folder, args.sets, args.ema_decays,
                     args.steps)
        return

    from difflab.config import load_config

    torch.set_num_threads(1)
    out = args.out or RESULTS / f"objectives_{budget}.json"
    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    print(f"command: {command}\ncpu: {cpu_name()}, torch {torch.__version__}, "
          f"DIFFLAB_NATIVE_BF16={os.environ.get('DIFFLAB_NATIVE_BF16', 'unset')}, "
          f"load {loadavg()}", flush=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    record = {
        "command": command, "commands": [*previous.get("commands", []), command],
        "cpu": cpu_name(), "torch": torch.__version__,
        "native_bf16_env": os.environ.get("DIFFLAB_NATIVE_BF16"),
        "minutes": None if args.steps else args.minutes, "steps": args.steps,
        "budget": "training steps of each one-thread process" if args.steps else
        "CPU seconds (time.process_time) of each one-thread training process",
        "samples": args.samples, "evaluator": "difflab.evaluation.evaluate_generator",
        "reference": args.reference,
        "results": previous.get("results", []), "nfe_sweep": previous.get("nfe_sweep", []),
        "load_average": {"start": loadavg()},
    }

    def save() -> None:
        record["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")

    runs = [(o, s) for o in args.objectives for s in args.seeds]
    for objective, seed in [] if args.eval_only else runs:  # one heavy process at a time
        t0 = time.perf_counter()
        what = f"{args.steps} steps" if args.steps else f"{args.minutes:g} CPU-min"
        print(f"[{time.strftime('%H:%M:%S')}] {objective} seed {seed}: training {what}",
              flush=True)
        subprocess.run([sys.executable, __file__, "--worker", objective, "--seed", str(seed),
                        "--minutes", str(args.minutes), "--work", str(args.work),
                        *(["--steps", str(args.steps)] if args.steps else []),
                        *(f"--set={kv}" for kv in args.sets),
                        *(["--ema-decays", *map(str, args.ema_decays)] if args.ema_decays
                          else [])],
                       env=env, check=True)
        print(f"  done in {time.perf_counter() - t0:.0f} s wall, load {loadavg()}", flush=True)
    if args.peer and not args.eval_only:
        print(f"[{time.strftime('%H:%M:%S')}] ddpm-pytorch: training", flush=True)
        peer_worker(args.peer_python, args.minutes, args.peer_samples, work / "peer")

    reference = {"reference_split": args.reference,
                 "n_reference": 10_000 if args.reference == "train" else None}
    if not args.no_eval:
        for objective, seed in runs:
            folder = work / f"{objective}_s{seed}"
            info = json.loads((folder / "train.json").read_text())
            print(f"[{time.strftime('%H:%M:%S')}] {objective} seed {seed}: "
                  f"{args.samples} samples", flush=True)
            # The preset's [sample] settings as the file has them now (the checkpoint keeps
            # those it trained with, which may predate an --nfe sweep's choice).
            cfg = load_config(ROOT / "configs" / f"{PRESETS[objective]}.toml")
            sc = cfg.sample
            weights = args.autoguidance or [None]
            for decay, weight in [(d, w) for d in [None, *args.ema_decays] for w in weights]:
                row = {**info, "ema_decay": cfg.train.ema_decay if decay is None else decay,
                       **evaluate(folder, args.samples, seed, ema_folder(decay),
                                  sampler=sc.sampler, steps=sc.steps, autoguidance=weight,
                                  **reference)}
                decay0, same = cfg.train.ema_decay, row_key(row, cfg.train.ema_decay)
                record["results"] = [r for r in record["results"]
                                     if row_key(r, decay0) != same] + [row]
                print(f"  FID {row['fid']:.2f} ({row['sampling']['sampler']}, "
                      f"{row['sampling']['nfe']} NFE, EMA {row['ema_decay']:g}, "
                      f"autoguidance {row['sampling']['autoguidance']}), "
                      f"{info['steps']} steps {info['train_precision']}", flush=True)
                save()
        if args.peer:
            row = score_peer(work / "peer", 0)
            record["results"] = [r for r in record["results"]
                                 if r["objective"] != "ddpm-pytorch"] + [row]
            save()

    for objective in args.nfe_objectives or (args.objectives if args.nfe else []):
        folder = work / f"{objective}_s{args.seeds[0]}"
        samplers = args.nfe_samplers or NFE_SAMPLERS[objective]
        preset_sampler = load_config(ROOT / "configs" / f"{PRESETS[objective]}.toml").sample.sampler
        for sampler in [preset_sampler if s == "preset" else s for s in samplers]:
            for nfe in args.nfe:
                steps = steps_for(sampler, nfe)
                guided = ({} if args.nfe_autoguidance is None
                          else {"autoguidance": args.nfe_autoguidance})
                row = evaluate(folder, args.nfe_samples, args.seeds[0], sampler=sampler,
                               steps=steps, **guided, **reference)
                row = {"objective": objective, "seed": args.seeds[0], **row}
                record["nfe_sweep"] = [
                    r for r in record["nfe_sweep"]
                    if (r["objective"], r["sampling"]["sampler"], r["sampling"]["steps"],
                        r["num_images"]) != (objective, sampler, steps, args.nfe_samples)
                ] + [row]
                print(f"  nfe {objective} {sampler} {steps} steps ({row['sampling']['nfe']} "
                      f"NFE): FID {row['fid']:.2f}", flush=True)
                save()

    record["load_average"]["end"] = loadavg()
    save()
    print("\n| objective | seed | precision | steps | train CPU s | EMA | sampler | NFE "
          "| samples | FID | KID x1e3 | precision | recall |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in record["results"]:
        s = r.get("sampling", {"sampler": r.get("sampler", "?"), "nfe": "?"})
        print(f"| {r['objective']} | {r['seed']} | {r.get('train_precision', '?')} "
              f"| {r['steps']} | {r['train_cpu_s']:.0f} | {r.get('ema_decay', '?')} "
              f"| {s['sampler']} | {s['nfe']} "
              f"| {r['num_images']} "
              f"| {r['fid']:.2f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_stderr']:.2f} "
              f"| {r['precision']:.3f} | {r['recall']:.3f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
