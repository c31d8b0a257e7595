"""img2img's strength: how often the picture becomes what the prompt asks, and how much of the
input survives, from strength 0.3 to 1.0; and the default strength this measurement picks.

    python bench/img2img_strength.py [--pipeline fashion-text] [--per-class 40]
        [--strengths 0.3 0.4 ... 1.0] [--out bench/results/img2img_strength]

Inputs: --per-class real Fashion-MNIST test images of each class (a seeded choice among those
difflab's classifier itself puts in their true class, so that a change of class is the
edit's doing). Each is asked to become ANOTHER class (a seeded choice among the other nine),
in words the model never trained on: a held-out paraphrase of that class
(difflab.data.captions.held_out_prompts). Sampling: the pipeline's own [sample] settings
(DPM-Solver++(2M), 20 steps, guidance 3, caption bank), seed 0, as `difflab img2img` runs.

Measured per strength, by difflab's shipped Fashion-MNIST feature classifier
(difflab.metrics.features; Inception cannot be had offline):
- change rate: the share of results the classifier puts in the prompt's class;
- kept rate: the share it still puts in the input's class;
- SSIM to the input (Gaussian window 11x11, sigma 1.5, as Wang et al. 2004; 1 = identical);
- pixel PSNR to the input (dB);
- feature distance to the input (L2 in the classifier's 128-d space), divided by the mean
  distance between two random test images of different classes (1 = as far as an unrelated
  image).

No tuning on what is reported. The images and the prompts are both split in two halves
("select": the first half of each class's images, the even-numbered paraphrases of each
class; "check": the rest). The rule, fixed before measuring: the default strength is the
smallest strength on the grid whose change rate on the "select" half reaches 80 % of the
largest change rate on that half. Both halves are reported; the rule is also applied to the
"check" half to show whether it picks the same strength there.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from difflab.data.captions import held_out_prompts
from difflab.metrics.features import feature_extractor, metric_split
from difflab.pipeline import Generator

RULE_FRACTION = 0.8  # the default reaches this share of the best change rate


def cpu_description() -> dict:
    """lscpu's model name and whether the flags include avx512_bf16 (native bf16)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model_name": None, "avx512_bf16": None}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {
        "model_name": fields.get("Model name"),
        "cpus": fields.get("CPU(s)"),
        "avx512_bf16": "avx512_bf16" in fields.get("Flags", "").split(),
    }


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of uint8 (N, 1, H, W) pairs: Gaussian 11x11 window, sigma 1.5,
    K1 0.01, K2 0.03, L 255, over the valid region (Wang et al. 2004)."""
    x, y = a.double(), b.double()
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, w)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


def pick_inputs(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, half) : per_class correctly classified test images of each class,
    half 0 ("select") for the first half of each class's picks, 1 ("check") for the rest."""
    test = metric_split("fashion_mnist", "test")
    net = feature_extractor("fashion_mnist", verbose=False)
    correct = torch.from_numpy(net.predict(test.images) == test.labels.numpy())
    g = torch.Generator().manual_seed(seed)
    idx, half = [], []
    for c in range(10):
        members = ((test.labels == c) & correct).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=g)[:per_class]]
        idx += chosen.tolist()
        half += [0] * (per_class // 2) + [1] * (per_class - per_class // 2)
    idx_t = torch.tensor(idx)
    return test.images[idx_t], test.labels[idx_t], torch.tensor(half)


def pick_prompts(
    labels: torch.Tensor, half: torch.Tensor, seed: int
) -> tuple[list[str], torch.Tensor]:
    """A target class other than each image's own, and a held-out paraphrase of it from the
    image's half of the paraphrases (even-numbered ones for "select", odd for "check")."""
    held = held_out_prompts("fashion_mnist")
    g = torch.Generator().manual_seed(seed + 1)
    prompts, targets = [], []
    for label, h in zip(labels.tolist(), half.tolist(), strict=True):
        target = (label + 1 + int(torch.randint(0, 9, (1,), generator=g))) % 10
        pool = held[target][h::2]
        prompts.append(pool[int(torch.randint(0, len(pool), (1,), generator=g))])
        targets.append(target)
    return prompts, torch.tensor(targets)


def grid_start(gen: Generator, sampler: str, steps: int, strength: float) -> tuple[float, int]:
    """(first timestep, steps run) of img2img at `strength`: the sampler's grid cut at
    strength * t_max, as generate_batches cuts it (samplers.timesteps.truncate_timesteps)."""
    from difflab.samplers import default_timesteps
    from difflab.samplers.timesteps import truncate_timesteps

    grid = default_timesteps(sampler, gen.process, steps)
    kept = truncate_timesteps(grid, gen.process, strength) if strength < 1 else grid
    return float(kept[0]), len(kept) - 1


def pick_default(rows: list[dict], half: str) -> float:
    """The rule: the smallest strength whose change rate reaches RULE_FRACTION of the best."""
    best = max(r[half]["change_rate"] for r in rows)
    return min(r["strength"] for r in rows if r[half]["change_rate"] >= RULE_FRACTION * best)


def summarize(out, inputs, labels, targets, f_in, f_out, scale) -> dict:
    net = feature_extractor("fashion_mnist", verbose=False)
    pred = torch.from_numpy(net.predict(out))
    dist = np.linalg.norm(f_out - f_in, axis=1) / scale
    return {
        "images": len(out),
        "change_rate": float((pred == targets).float().mean()),
        "kept_rate": float((pred == labels).float().mean()),
        "ssim": float(ssim(out, inputs).mean()),
        "psnr_db": float(psnr(out, inputs).mean()),
        "feature_distance": float(dist.mean()),
    }


def markdown(result: dict) -> str:
    """The section for BENCHMARKS.md."""
    cpu = result["cpu"]
    rows = result["rows"]
    d = result["default"]
    lines = [
        "## img2img: the default strength",
        "",
        f"`{result['pipeline']}`'s `img2img` at strengths "
        f"{rows[0]['strength']:.1f}–{rows[-1]['strength']:.1f}: "
        f"{result['images']} real Fashion-MNIST test images ({result['per_class']} per class, "
        "among those the classifier itself puts in their true class), each asked to become "
        "another class (a seeded choice among the other nine) in a held-out paraphrase of it "
        "(`difflab.data.captions.held_out_prompts`; never a training caption). The pipeline's "
        f"own sampling settings: {result['sampling']}, seed {result['seed']}, one result per "
        "image. Judged by difflab's shipped Fashion-MNIST classifier "
        f"({result['feature_space']}): *change* = share of results it puts in the prompt's "
        "class, *kept* = share still in the input's class; SSIM (11×11 Gaussian, σ 1.5), "
        "pixel PSNR and the classifier-feature distance to the input (1 = the mean distance "
        "between two test images of different classes) say how much of the input survives.",
        "",
        "Rule, fixed before measuring: **the default is the smallest strength whose change "
        f"rate reaches {RULE_FRACTION:.0%} of the largest**, chosen on the *select* half (the "
        "first half of each class's images, the even-numbered paraphrases of each class) and "
        "checked on the *check* half (the other images and paraphrases; "
        f"{result['halves']['select']} and {result['halves']['check']} images).",
        "",
        "| strength | starts at t (steps) | change, select | change, check | kept, select "
        "| kept, check | SSIM | PSNR (dB) | feature distance | s / 100 images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b, al = r["select"], r["check"], r["all"]
        mark = " **←**" if abs(r["strength"] - d["select"]) < 1e-9 else ""
        lines.append(
            f"| {r['strength']:.1f}{mark} | {r['start_t']:.0f} ({r['steps_run']}) "
            f"| {a['change_rate']:.1%} | {b['change_rate']:.1%} | "
            f"{a['kept_rate']:.1%} | {b['kept_rate']:.1%} | {al['ssim']:.3f} | "
            f"{al['psnr_db']:.1f} | {al['feature_distance']:.2f} | "
            f"{100 * r['seconds'] / result['images']:.1f} |"
        )
    ties = [f"{r['strength']:.1f} and {q['strength']:.1f}"
            for r, q in zip(rows, rows[1:], strict=False) if r["start_t"] == q["start_t"]]
    same = "strengths " + ", ".join(ties) if ties else ""
    best_a = max(r["select"]["change_rate"] for r in rows)
    best_b = max(r["check"]["change_rate"] for r in rows)
    lower = [r for r in rows if r["strength"] < d["select"] - 1e-9]
    below = ""
    if lower:  # how close the next smaller strength came: a default on a knife edge shows
        r = lower[-1]
        n_select = result["halves"]["select"]
        changed = round(r["select"]["change_rate"] * n_select)
        needed = math.ceil(RULE_FRACTION * best_a * n_select - 1e-9)
        below = (f" ({r['strength']:.1f} changes {changed} of {n_select} images, "
                 f"{r['select']['change_rate']:.1%}; the bar needs {needed})")
    lines += [
        "",
        f"On the select half the best change rate is {best_a:.1%}, so the bar is "
        f"{RULE_FRACTION * best_a:.1%}: the rule picks **{d['select']:.1f}**, now the default "
        f"of `Generator.img2img` and `difflab img2img --strength`{below}. The same rule on "
        f"the check half (best {best_b:.1%}) picks {d['check']:.1f}. SSIM, PSNR and feature "
        "distance are over both halves.",
        "",
        f"The edit starts at the last timestep of the sampler's {result['sampling'].split(',')[0]} "
        f"grid at or below strength × t_max ({result['t_max']:g}; "
        "`samplers.timesteps.truncate_timesteps`, "
        "the *starts at t* column), so strength moves in the grid's steps"
        + (f": {same}, which start at the same timestep, give the same images." if same else "."),
        "",
        "```sh",
        result["command"],
        "```",
        "",
        f"CPU: {cpu['model_name']} ({cpu['cpus']} CPUs; avx512_bf16 "
        f"{'in' if cpu['avx512_bf16'] else 'not in'} the flags), one intra-op thread, "
        f"shared with another benchmark; {result['seconds'] / 60:.1f} minutes in all. "
        f"torch {result['torch']}.",
        "",
    ]
    if result.get("picture"):
        strengths = ", ".join(f"{r['strength']:.1f}" for r in rows)
        lines += [
            f"![inputs and results]({result['picture']}) — each row one input "
            f"(left), then its results at strengths {strengths}; the prompts are in the JSON.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="fashion-text")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--strengths", type=float, nargs="+",
                   default=[round(0.3 + 0.1 * i, 1) for i in range(8)])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--out", default="bench/results/img2img_strength",
                   help="path prefix of the .json, .md and .png written")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only write the .md of an earlier run's JSON (beside it)")
    args = p.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {args.render.with_suffix('.md')}")
        return
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print("command:", command)
    start = time.perf_counter()
    gen = Generator.from_checkpoint(args.pipeline, device="cpu")
    settings = gen.sampling_settings(conditioned=True)
    net = feature_extractor("fashion_mnist", verbose=False)
    inputs, labels, half = pick_inputs(args.per_class, args.seed)
    prompts, targets = pick_prompts(labels, half, args.seed)
    f_in = net.features(inputs)
    # Scale of the feature distance: the mean distance between test images of different
    # classes (a seeded sample of pairs).
    test = metric_split("fashion_mnist", "test")
    g = torch.Generator().manual_seed(args.seed + 2)
    a, b = torch.randint(0, len(test), (2, 4000), generator=g)
    keep = test.labels[a] != test.labels[b]
    fa, fb = net.features(test.images[a[keep]]), net.features(test.images[b[keep]])
    scale = float(np.linalg.norm(fa - fb, axis=1).mean())
    example = [i * args.per_class for i in range(10)]  # the first input of each class
    rows, columns = [], [inputs[example]]  # the picture: inputs, then a column per strength
    for s in args.strengths:
        t0 = time.perf_counter()
        out = gen.img2img(inputs, prompts, strength=s, seed=args.seed,
                          batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        f_out = net.features(out)
        start_t, steps_run = grid_start(gen, settings.sampler, settings.steps, s)
        row: dict = {"strength": s, "start_t": start_t, "steps_run": steps_run,
                     "seconds": round(seconds, 1)}
        for name, sel in (("select", half == 0), ("check", half == 1), ("all", half >= 0)):
            m = sel.numpy()
            row[name] = summarize(out[sel], inputs[sel], labels[sel], targets[sel],
                                  f_in[m], f_out[m], scale)
        rows.append(row)
        columns.append(out[example])
        print(f"strength {s:.1f}: change {row['select']['change_rate']:.1%} / "
              f"{row['check']['change_rate']:.1%} (select / check), kept "
              f"{row['all']['kept_rate']:.1%}, SSIM {row['all']['ssim']:.3f}, PSNR "
              f"{row['all']['psnr_db']:.1f} dB, feature distance "
              f"{row['all']['feature_distance']:.2f}, {seconds:.0f} s", flush=True)
    out_prefix = Path(args.out)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    picture = out_prefix.with_suffix(".png")
    from difflab import viz

    grid = torch.stack(columns, dim=1).flatten(0, 1)  # row i: input i, its results in order
    viz.save_grid(grid, picture, nrow=len(columns), scale=2)
    result = {
        "command": command,
        "pipeline": args.pipeline,
        "sampling": f"{settings.sampler}, {settings.steps} steps, guidance {settings.guidance:g}"
        f", {gen.nearest_captions()} nearest captions",
        "seed": args.seed,
        "per_class": args.per_class,
        "images": len(inputs),
        "halves": {"select": int((half == 0).sum()), "check": int((half == 1).sum())},
        "rule": f"smallest strength with change rate >= {RULE_FRACTION} x the largest "
                "(select half)",
        "feature_space": net.feature_space,
        "t_max": float(gen.process.t_max),
        "feature_distance_scale": scale,
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "examples": [{"label": int(labels[i]), "target": int(targets[i]), "prompt": prompts[i]}
                     for i in example],
        "prompts": [{"label": int(c), "target": int(t), "prompt": q, "half": int(h)}
                    for c, t, q, h in zip(labels, targets, prompts, half, strict=True)],
        "picture": str(picture),
    }
    result["default"] = {"select": pick_default(rows, "select"),
                         "check": pick_default(rows, "check")}
    result["seconds"] = round(time.perf_counter() - start, 1)
    out_prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out_prefix.with_suffix(".md").write_text(markdown(result))
    print(f"default strength (rule on the select half): {result['default']['select']:.1f}; "
          f"on the check half: {result['default']['check']:.1f}")
    print(f"wrote {out_prefix}.json, .md, .png")


if __name__ == "__main__":
    main()
